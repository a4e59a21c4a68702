"""Asking the host driver (through NVML) what it is and which GPUs it has.

The work happens in a confined, forked helper (see :mod:`nvc.nvml.query`); importing this package is cheap and
never loads pynvml or any driver library.
"""

from __future__ import annotations

from nvc.nvml.query import BRAND_NAMES, DEFAULT_TIMEOUT, NOBODY, format_cuda_version, query_driver

__all__ = ["BRAND_NAMES", "DEFAULT_TIMEOUT", "NOBODY", "format_cuda_version", "query_driver"]
