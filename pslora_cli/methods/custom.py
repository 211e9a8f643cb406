"""Every knob as the sequence gives it: stability and orthogonality weights, merge, previous."""

from . import MethodSpec, register

register(MethodSpec("custom", "every setting as given", sparsity=None))
