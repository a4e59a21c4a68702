"""nvc: give containers the NVIDIA driver, compatible with libnvidia-container's CLI and NVIDIA's OCI hook."""

__version__ = "0.1.0"
# The libnvidia-container release whose command line and output we follow; printed as `cli-version:` because
# gVisor's runsc parses that first line to decide which flags it may pass.
CLI_COMPAT_VERSION = "1.17.8"
