"""Deprecated: this module is now :mod:`kdcache.views.keyed` (every name forwards, with a warning)."""

from kdcache.registry import moved_module

__getattr__ = moved_module(
    __name__,
    "kdcache.views.keyed",
    {
        "build_pipeline": "build_transform",
        "describe_pipeline": "describe_transform",
        "check_pipeline_names": "check_transform_names",
        "PIPELINE_RNG": "TRANSFORM_RNG",
        "PIPELINE_DOMAIN": "TRANSFORM_DOMAIN",
    },
)
