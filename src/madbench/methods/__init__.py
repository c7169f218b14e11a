"""Methods: one file each, registered in METHODS."""

from madbench.methods.base import METHODS, Method, get_method, list_methods, register_method

__all__ = ["METHODS", "Method", "get_method", "list_methods", "register_method"]
