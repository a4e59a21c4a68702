"""Run ldconfig inside the container, confined: chrooted into the rootfs, as the container's owner, empty
environment, resource limits, no new privileges.

``@/sbin/ldconfig`` names a HOST binary: it is opened on the host side before we enter the container's mount
namespace and exec'd by fd from inside the chroot, so the image cannot substitute its own. Without ``@`` the
image's own ldconfig runs (NVIDIA's default: ``/sbin/ldconfig.real`` if the image has it, else ``/sbin/ldconfig``);
an image without one is skipped, as NVIDIA does.
"""

from __future__ import annotations

import os
import resource  # here, not where ldconfig runs: that is inside the container's mount namespace
import time

from nvc.errors import NvcError
from nvc.sys.process import set_no_new_privs

DEFAULT_CANDIDATES = ("/sbin/ldconfig.real", "/sbin/ldconfig")
TIMEOUT_SECONDS = 30.0
_LIMITS = (
    (resource.RLIMIT_CPU, 10),
    (resource.RLIMIT_FSIZE, 256 * 1024 * 1024),
    (resource.RLIMIT_NOFILE, 64),
    (resource.RLIMIT_NPROC, 1024),
)
_SIGKILL = 9  # the same on every Linux architecture; the signal module would pull in enum (~4 ms of start-up)


def open_host_ldconfig(spec: str | None) -> int | None:
    """For ``@path``: an fd of the host binary (call this on the host side). None for an in-image ldconfig."""
    if not spec or not spec.startswith("@"):
        return None
    path = spec[1:]
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NvcError("ldcache", f"open failed: {path}: {exc.strerror.lower()}") from None


def command_line(display: str, directories: tuple[str, ...]) -> list[str]:
    return [display, "-f", "/etc/ld.so.conf", "-C", "/etc/ld.so.cache", *directories]


def run_ldconfig(
    rootfs: str,
    spec: str | None,
    host_fd: int | None,
    directories: tuple[str, ...],
    uid: int,
    gid: int,
    image_has=os.path.exists,
) -> str | None:
    """Run ldconfig for ``directories`` chrooted in ``rootfs``; returns a skip reason, or None when it ran.

    Must be called inside the container's mount namespace (``rootfs`` is its path there).
    """
    if host_fd is None:
        candidates = (spec,) if spec else DEFAULT_CANDIDATES
        from nvc.rootpath import host_path, resolve_in_root

        chosen = next((c for c in candidates if image_has(host_path(rootfs, resolve_in_root(rootfs, c)))), None)
        if chosen is None:
            return f"no ldconfig in the container ({', '.join(candidates)}): skipped"
        display = chosen
    else:
        display = (spec or "")[1:]
    argv = command_line(display, directories)
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 127
        try:
            os.chroot(rootfs)
            os.chdir("/")
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            for limit, value in _LIMITS:
                resource.setrlimit(limit, (value, value))
            set_no_new_privs()
            devnull = os.open("/dev/null", os.O_RDWR) if os.path.exists("/dev/null") else None
            if devnull is not None:
                os.dup2(devnull, 0)
            if host_fd is not None:
                os.execve(host_fd, argv, {})
            else:
                os.execve(display, argv, {})
        except BaseException:
            code = 126
        finally:
            os._exit(code)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    status = None
    try:
        while status is None:
            done, result = os.waitpid(pid, os.WNOHANG)
            if done:
                status = result
            elif time.monotonic() > deadline:
                raise NvcError("ldcache", f"process {display} timed out")
            else:
                time.sleep(0.002)
    except BaseException:  # timed out, or the start is interrupted: the image's ldconfig must not outlive it
        if status is None:  # not reaped yet: the pid is still that child's
            try:
                os.kill(pid, _SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):  # reaped just before the interruption
                pass
        raise
    if os.WIFSIGNALED(status):
        raise NvcError("ldcache", f"process {display} terminated with signal {os.WTERMSIG(status)}")
    code = os.WEXITSTATUS(status)
    if code != 0:
        raise NvcError("ldcache", f"process {display} failed with error code: {code}")
    return None

