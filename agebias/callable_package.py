"""Packages that are also functions: ``agebias.evaluate(...)`` and ``agebias.finetune(...)``.

``agebias.evaluate`` and ``agebias.finetune`` are subpackages (``agebias.evaluate.metrics``, ...) and, for
notebooks, the API calls :func:`agebias.api.evaluate` and :func:`agebias.api.finetune`. Python lets a module's
class be a subclass of ``ModuleType`` (the data model's "customizing module attribute access"); these packages set
theirs to one whose ``__call__`` forwards to the API function, imported on the first call.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types


def make_callable(package: str, target: str) -> None:
    """Make ``sys.modules[package]`` callable as ``target`` (``"module:function"``)."""
    module_name, _, function = target.partition(":")

    def target():
        return getattr(importlib.import_module(module_name), function)

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return target()(*args, **kwargs)

        @property
        def __signature__(self) -> inspect.Signature:  # what inspect, IPython's ``?`` and editors show for a call
            return inspect.signature(target())

    CallablePackage.__call__.__doc__ = f"Same as :func:`{module_name}.{function}`."
    sys.modules[package].__class__ = CallablePackage
