"""Query the driver through the real pynvml, in a forked, chrooted, unprivileged child with a deadline.

Why a child, as libnvidia-container does with its RPC helper:

* a wedged driver (no persistence daemon, a GPU falling off the bus) can block ``nvmlInit`` for a long time; the
  parent must be able to give up after ``timeout`` seconds ("driver rpc error: timed out") and kill the helper;
* the driver library is foreign code: it may print, crash or leave threads behind; none of that may reach us;
* run as root, NVML creates ``/dev/nvidiactl`` (and friends) in the current root's ``/dev``. The helper chroots
  into the driver root and drops to an unprivileged uid with ``no_new_privs``, so it cannot touch the host's
  ``/dev`` nor regain privileges through setuid helpers such as ``nvidia-modprobe``.

The library is dlopened by its host path BEFORE the chroot (the caller found it through the driver root's
ld.so.cache), and handed to pynvml by setting its module global ``nvmlLib``: pynvml's ``_LoadNvmlLibrary`` only
dlopens ``libnvidia-ml.so.1`` by name when that global is ``None``, so it never searches for another copy.

The child answers with one JSON object on a pipe, ``{"ok": DriverInfo.to_dict()}`` or
``{"stage": ..., "error": ...}``, and leaves through ``os._exit`` so no parent atexit handler, buffered output or
test-framework machinery runs twice.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import select
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

from nvc.driver_info import DriverInfo, GpuInfo, MigDevice
from nvc.errors import NvcError

if TYPE_CHECKING:
    from types import ModuleType

NVML_SONAME = "libnvidia-ml.so.1"
DEFAULT_TIMEOUT = 10.0  # seconds; libnvidia-container's RPC timeout
NOBODY = (65534, 65534)  # (uid, gid) the helper runs as when we are root and no user was given

# NVML brand enum value -> the string libnvidia-container prints (nvmlBrandType_t; pynvml's NVML_BRAND_*).
BRAND_NAMES: dict[int, str] = {
    1: "Quadro",  # QUADRO
    2: "Tesla",  # TESLA
    3: "NVS",  # NVS
    4: "GRID",  # GRID
    5: "GeForce",  # GEFORCE
    6: "TITAN",  # TITAN
    7: "VApps",  # NVIDIA_VAPPS
    8: "VPC",  # NVIDIA_VPC
    9: "VCS",  # NVIDIA_VCS
    10: "VWS",  # NVIDIA_VWS
    11: "CloudGaming",  # NVIDIA_CLOUD_GAMING
    12: "QuadroRTX",  # QUADRO_RTX
    13: "NvidiaRTX",  # NVIDIA_RTX
    14: "Nvidia",  # NVIDIA
    15: "GeForceRTX",  # GEFORCE_RTX
    16: "TitanRTX",  # TITAN_RTX
}

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_MAX_ANSWER = 16 << 20  # a sane upper bound on the helper's JSON answer
_REAP_GRACE = 2.0  # seconds to wait for a SIGKILLed helper to go away


def format_cuda_version(version: int) -> str:
    """CUDA version as libnvidia-container prints it: ``v/1000 . (v%100)/10`` (12020 -> "12.2", 12040 -> "12.4")."""
    return f"{version // 1000}.{version % 100 // 10}"


def query_driver(
    library_path: str,
    driver_root: str = "/",
    timeout: float = DEFAULT_TIMEOUT,
    user: tuple[int, int] | None = None,
) -> DriverInfo:
    """Load ``library_path`` (the host path of the root's libnvidia-ml.so.1) in a confined child and query it.

    ``driver_root`` is chrooted into after the library is loaded (unless it is ``/``); ``user`` is the
    ``(uid, gid)`` the child drops to (default: nobody when we are root, unchanged otherwise). Raises
    :class:`NvcError` with libnvidia-container's messages: ``initialization`` for loading, ``nvmlInit`` and the
    helper itself (``driver rpc error: timed out``), ``detection`` for NVML failures after a successful init.
    """
    # Everything the child needs is imported BEFORE the fork: importing after it could deadlock on an import
    # lock held by another thread at fork time, and would repeat the work in every child.
    import ctypes

    import pynvml

    if timeout <= 0:
        raise ValueError("timeout must be positive")
    chroot_to = os.path.realpath(driver_root)
    if not os.path.isdir(chroot_to):
        raise NvcError("initialization", f"driver rpc error: {driver_root}: no such directory")
    parent = os.getpid()
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(rfd)
        os.close(wfd)
        raise NvcError("initialization", f"driver rpc error: fork failed: {_strerror(exc)}") from None
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        os.close(rfd)
        _child_main(wfd, parent, library_path, chroot_to, user, pynvml, ctypes)
    os.close(wfd)
    deadline = time.monotonic() + timeout
    answer: bytes | None = None
    reaped = False
    status = 0
    try:
        answer = _read_answer(rfd, deadline)
        if answer is not None:
            status, reaped = _wait_child(pid, deadline)
    finally:
        os.close(rfd)
        if not reaped:
            # Timed out, interrupted, or the helper lingers after answering: it gets no second chance.
            status, _ = _kill_child(pid)
    if answer is None:
        raise NvcError("initialization", "driver rpc error: timed out")
    return _parse_answer(answer, status)


# ----------------------------------------------------------------------------------------------------- parent


def _read_answer(rfd: int, deadline: float) -> bytes | None:
    """Read the pipe until EOF (the child closed it or died); ``None`` if the deadline passed first."""
    chunks: list[bytes] = []
    size = 0
    poller = select.poll()
    poller.register(rfd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(max(1, int(left * 1000 + 0.999))):
            continue
        chunk = os.read(rfd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > _MAX_ANSWER:
            return b"".join(chunks)  # garbage; _parse_answer reports it
        chunks.append(chunk)


def _wait_child(pid: int, deadline: float) -> tuple[int, bool]:
    """Wait (until ``deadline``) for the helper to exit; returns ``(wait status, reaped)``."""
    pidfd = _pidfd(pid)
    try:
        while True:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # SIGCHLD ignored by the application: the kernel reaped it for us
                return 0, True
            if got == pid:
                return status, True
            left = deadline - time.monotonic()
            if left <= 0:
                return 0, False
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_child(pid: int) -> tuple[int, bool]:
    """SIGKILL the helper and reap it; a helper stuck in the kernel is left behind after a short grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return _wait_child(pid, time.monotonic() + _REAP_GRACE)


def _pidfd(pid: int) -> int | None:
    """A pidfd to sleep on until the child exits (Linux >= 5.3), or ``None`` to fall back to polling."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _parse_answer(answer: bytes, status: int) -> DriverInfo:
    """Turn the helper's JSON into a DriverInfo, or its error (or its death) into an NvcError."""
    try:
        message = json.loads(answer)
        if not isinstance(message, dict):
            raise ValueError("not an object")
    except ValueError:
        raise NvcError("initialization", f"driver rpc error: {_describe_death(status)}") from None
    if "ok" in message:
        try:
            return DriverInfo.from_dict(message["ok"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NvcError("initialization", f"driver rpc error: malformed answer: {exc}") from None
    stage = message.get("stage", "initialization")
    raise NvcError(stage if stage in ("initialization", "detection") else "initialization", str(message["error"]))


def _describe_death(status: int) -> str:
    """Why the helper gave no answer, from its wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"helper process killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"helper process exited with status {os.WEXITSTATUS(status)} without answering"
    return "helper process gave no answer"


def _strerror(exc: OSError) -> str:
    """strerror text, lowercased as libnvidia-container prints it."""
    return (exc.strerror or str(exc)).lower()


# ----------------------------------------------------------------------------------------------------- child


class _Failure(Exception):
    """A failure the child reports verbatim: ``stage`` and libnvidia-container's message."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


def _child_main(
    wfd: int,
    parent: int,
    library_path: str,
    root: str,
    user: tuple[int, int] | None,
    pynvml: ModuleType,
    ctypes: ModuleType,
) -> NoReturn:  # pragma: no cover - runs in the forked child
    """The helper: confine itself, query NVML, answer on ``wfd`` and ``_exit`` whatever happens."""
    code = 0
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        # faulthandler (enabled by pytest, or python -X faulthandler) writes to a saved copy of the parent's
        # stderr: a crashing driver would dump a Python traceback there. A crash is reported by its signal.
        if faulthandler.is_enabled():
            faulthandler.disable()
        # NVML may print; the driver library is not ours. Keep our (and pytest's) terminal clean.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if devnull > 2:
            os.close(devnull)
        try:
            info = _child_query(parent, library_path, root, user, pynvml, ctypes)
        except _Failure as failure:
            _write_all(wfd, json.dumps({"stage": failure.stage, "error": failure.message}).encode())
        else:
            # No nvmlShutdown: the process ends right here and the kernel releases what NVML held, while a
            # wedged driver could hang a shutdown call and hold up the parent until its deadline.
            _write_all(wfd, json.dumps({"ok": info}).encode())
    except BaseException as exc:
        code = 1
        try:
            text = f"driver rpc error: {type(exc).__name__}: {exc}"
            _write_all(wfd, json.dumps({"stage": "initialization", "error": text}).encode())
        except BaseException:
            pass
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a pipe write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _child_query(
    parent: int,
    library_path: str,
    root: str,
    user: tuple[int, int] | None,
    pynvml: ModuleType,
    ctypes: ModuleType,
) -> dict[str, Any]:  # pragma: no cover - runs in the forked child
    """Load the library, confine ourselves, then ask NVML; returns ``DriverInfo.to_dict()``."""
    # A lock another parent thread held at fork time stays locked forever in the child.
    if hasattr(pynvml, "libLoadLock"):
        pynvml.libLoadLock = threading.Lock()
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        # RTLD_NOW is always added by ctypes, as libnvidia-container does.
        lib = ctypes.CDLL(library_path, mode=os.RTLD_LOCAL)
    except OSError as exc:
        raise _Failure("initialization", f"load library failed: {_dlerror_text(exc, library_path)}") from None
    pynvml.nvmlLib = lib
    pynvml._nvmlGetFunctionPointer_cache.clear()
    _confine(root, user, libc, ctypes, parent)

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise _Failure("initialization", _nvml_message(pynvml, exc)) from None
    try:
        return _collect(pynvml)
    except pynvml.NVMLError as exc:
        raise _Failure("detection", _nvml_message(pynvml, exc)) from None


def _dlerror_text(exc: OSError, library_path: str) -> str:
    """dlerror text as libnvidia-container shows it, lowercased.

    NVIDIA dlopens ``libnvidia-ml.so.1`` by soname inside the chroot, so its dlerror names the soname; we load
    the resolved host path, so that path is put back as the soname to print the same line.
    """
    text = str(exc)
    if text.startswith(library_path + ":"):
        text = NVML_SONAME + text[len(library_path) :]
    return text.lower()


def _confine(
    root: str, user: tuple[int, int] | None, libc: Any, ctypes: ModuleType, parent: int
) -> None:  # pragma: no cover - runs in the forked child
    """chroot into the driver root, drop to ``user`` (or nobody when root), forbid privilege regain."""
    if root != "/":
        try:
            os.chroot(root)
            os.chdir("/")
        except OSError as exc:
            raise _Failure("initialization", f"driver rpc error: chroot {root} failed: {_strerror(exc)}") from None
    target = user if user is not None else (NOBODY if os.geteuid() == 0 else None)
    if target is not None:
        uid, gid = target
        try:
            if os.geteuid() == 0:
                os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        except OSError as exc:
            raise _Failure(
                "initialization", f"driver rpc error: privilege change to {uid}:{gid} failed: {_strerror(exc)}"
            ) from None
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise _Failure("initialization", f"driver rpc error: prctl failed: {os.strerror(err).lower()}")
    # Credential changes clear the parent-death signal, so set it last; then close the race with a dead parent.
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _nvml_message(pynvml: ModuleType, exc: Any) -> str:
    """``nvml error: <nvmlErrorString(code)>`` lowercased, from the loaded library itself when it can say."""
    text = ""
    try:
        text = pynvml.nvmlErrorString(exc.value)
    except Exception:
        text = ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if not text:
        text = str(exc)
    return f"nvml error: {text}".lower()


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _collect(pynvml: ModuleType) -> dict[str, Any]:  # pragma: no cover - runs in the forked child
    """The driver query itself, in GPU index order, as libnvidia-container makes it."""
    driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
    cuda_version = format_cuda_version(pynvml.nvmlSystemGetCudaDriverVersion())
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pci = pynvml.nvmlDeviceGetPciInfo(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        mig_enabled, migs = _collect_migs(pynvml, handle)
        gpus.append(
            GpuInfo(
                index=index,
                minor=pynvml.nvmlDeviceGetMinorNumber(handle),
                model=_text(pynvml.nvmlDeviceGetName(handle)),
                brand=BRAND_NAMES.get(pynvml.nvmlDeviceGetBrand(handle), "Unknown"),
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                bus_id=f"{pci.domain:08x}:{pci.bus:02x}:{pci.device:02x}.0",
                arch=f"{major}.{minor}",
                mig_enabled=mig_enabled,
                mig_devices=tuple(migs),
            )
        )
    return DriverInfo(driver_version=driver_version, cuda_version=cuda_version, gpus=tuple(gpus)).to_dict()


def _collect_migs(pynvml: ModuleType, handle: Any) -> tuple[bool, list[MigDevice]]:  # pragma: no cover
    """MIG mode and the MIG devices in slot order; a GPU (or driver) without MIG support has none."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError as exc:
        if exc.value in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
            return False, []
        raise
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return False, []
    migs = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError as exc:
            if exc.value == pynvml.NVML_ERROR_NOT_FOUND:
                continue  # an empty slot
            raise
        migs.append(
            MigDevice(
                index=slot,
                gpu_instance_id=pynvml.nvmlDeviceGetGpuInstanceId(mig),
                compute_instance_id=pynvml.nvmlDeviceGetComputeInstanceId(mig),
                uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),
            )
        )
    return True, migs
