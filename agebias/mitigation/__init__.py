"""Bias-mitigation methods with age groups as the protected attribute.

One module per method holds its formula, its hooks class and its registration (``label_flip``, ``group_margin``,
``adversarial``, ``mixfair``, ``ddl``); :mod:`agebias.mitigation.base` defines the hook points the fine-tuning loop
calls, :mod:`agebias.mitigation.registry` the ``NAME[:key=value,...]`` specs. Importing this package (which any
import of a submodule does) registers the built-in methods.
"""

# registration, in the order ``--help`` lists the methods
from agebias.mitigation import label_flip  # noqa: F401
from agebias.mitigation import group_margin  # noqa: F401
from agebias.mitigation import adversarial  # noqa: F401
from agebias.mitigation import mixfair  # noqa: F401
from agebias.mitigation import ddl  # noqa: F401
