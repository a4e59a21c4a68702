"""The kernel-call layer: mount, namespaces and openat2 through cffi. It knows nothing about NVIDIA.

Importing any module here is cheap: the cffi FFI is built on the first call (see ``nvc.sys._ffi``), so commands
that never mount (``info``, ``list``) do not pay for it. Every function raises ``OSError(errno, strerror, path)``.
"""
