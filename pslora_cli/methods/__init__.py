"""Continual-learning methods, one module per method family, registered by name.

A method module owns everything about itself: its settings (`declare`), its loss terms (`Term`), its training
hooks (`Hooks`), what a selection protocol may tune (`Knob`) and how it merges (MethodSpec). The validator, the
stored form, preflight, the regulariser, the recipe, the task cache, `compare` and the help texts read this
registry and name no method. A method outside the package is a plug-in: a module that registers the same way,
named in the environment variable PSLORA_PLUGINS (comma-separated module names, imported here, before the
config's method section is built from the declared settings; docs/plugins.md).
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from .registry import (METHODS, SETTINGS, TERMS, Hooks, Knob, MethodSpec, Term, TermInputs,  # noqa: F401
                       active_terms, declare, get_method, method_settings, methods_help, register, register_term)

# Registered in this order (the order of the help texts, of the choices in error messages and of the loss terms'
# sum): these first, then every other module of this package by name (a new method is a new module, nothing to
# add here), then custom.
FIRST = ("ps_lora", "inc_lora", "o_lora", "n_lora", "inflora", "seq_lora", "magmax", "per_task", "multitask")
LAST = ("custom",)
PLUGINS_ENV = "PSLORA_PLUGINS"


def _load_package() -> None:
    found = sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name != "registry")
    for name in (*FIRST, *[n for n in found if n not in FIRST + LAST], *LAST):
        importlib.import_module(f"{__name__}.{name}")


PLUGIN_ERRORS: list[str] = []  # raised by check_plugins (the CLI's first step, and validation), not at import


def _load_plugins() -> None:
    for name in filter(None, (part.strip() for part in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported as one line by check_plugins
            PLUGIN_ERRORS.append(f"{PLUGINS_ENV}: cannot import the plug-in module {name!r}: "
                                 f"{type(exc).__name__}: {exc}")


def check_plugins() -> None:
    """An InputError naming the first plug-in that could not be imported."""
    if PLUGIN_ERRORS:
        from ..errors import InputError

        raise InputError(PLUGIN_ERRORS[0])


_load_package()
_load_plugins()
