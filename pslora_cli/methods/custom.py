"""Every knob as the sequence gives it: stability and orthogonality weights, merge, previous."""

from .registry import MethodSpec, register

register(MethodSpec("custom", "every setting as given", any_terms=True))
