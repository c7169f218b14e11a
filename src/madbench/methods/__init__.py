"""Methods: one file each, registered in METHODS (see :mod:`madbench.methods.base`).

Registered: ``dsm`` (ambient DSM), ``mad`` (manifold-aware DSM), ``rsgm`` (Riemannian score
matching), ``oracle`` (the dataset's exact score). Adding a baseline: one new file here with a
:class:`Method` subclass decorated ``@register_method("name")``, one import line below, and its
config values (docs/methods.md has the checklist).
"""

from madbench.methods.base import METHODS, Method, get_method, list_methods, register_method

# Importing the modules registers their methods (one line per method).
from madbench.methods import dsm, mad, oracle, rsgm  # noqa: E402,F401  isort: skip

__all__ = ["METHODS", "Method", "get_method", "list_methods", "register_method"]
