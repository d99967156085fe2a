"""Deprecated: this module is now :mod:`kdcache.tools.recompute` (every name forwards, with a warning)."""

from kdcache.registry import moved_module

__getattr__ = moved_module(__name__, "kdcache.tools.recompute")
