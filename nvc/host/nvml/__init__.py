"""Asking the host driver (through NVML) what it is and which GPUs it has.

The work happens in a confined, forked helper (see :mod:`nvc.host.nvml.query`); importing this package is cheap and
never loads pynvml or any driver library.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from nvc.host.nvml.query import BRAND_NAMES, DEFAULT_TIMEOUT, NOBODY, format_cuda_version, query_driver

__all__ = ["BRAND_NAMES", "DEFAULT_TIMEOUT", "NOBODY", "format_cuda_version", "query_driver"]


def __getattr__(name: str):
    # Lazy: the hot path imports nvc.host.nvml.cache only; the helper's modules load when NVML is really asked.
    if name in __all__:
        from nvc.host.nvml import query

        return getattr(query, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
