"""Methods: one file each, registered in ``METHODS`` (``madbench list methods`` names them).

Adding a method: one file here with a :class:`Method` subclass (an ambient score model
subclasses :class:`AmbientMethod` and defines ``scaled_score``) decorated
``@register_method("name")``, and one import line below; its hyper-parameters are its
``Params`` dataclass. docs/architecture.md has the checklist.
"""

from madbench.methods.base import (
    METHODS,
    AmbientMethod,
    AmbientParams,
    Method,
    MethodParams,
    get_method,
    list_methods,
    register_method,
)

# Importing the modules registers their methods (one line per method).
from madbench.methods import dsm, mad, oracle, rsgm  # noqa: E402,F401  isort: skip

__all__ = [
    "METHODS",
    "AmbientMethod",
    "AmbientParams",
    "Method",
    "MethodParams",
    "get_method",
    "list_methods",
    "register_method",
]
