"""The resident hook helper: the OCI hook's code loaded once, a forked child per container start.

``nvc-hook-helper`` (run by ``hooks/nvc-hook-helper.service``, enabled by the .deb) listens on ``hook.sock`` in the
answer cache directory (``/run/nvc``). The hook's launcher (:mod:`nvc.hook_client`) connects, passes its stdin,
stdout, stderr and working directory as descriptors with its argv, environment and the state it read; a child of
the helper then runs :func:`nvc.commands.hook.main` on them, as the launcher would have, and reports the exit
status. What the helper saves is the hook's imports (the modules are loaded before the first start), the copying
of the memory a start writes (each spare does it while it waits for a start) and the parsing of config.toml; the
work itself, every rule and every check, is the hook's own code, run once per start as before.

Nothing depends on it: without a helper, or whenever it declines, the launcher runs the hook in its own process.
What keeps it safe:

* the socket is root's, mode 0600, in the root-only cache directory, and each caller's credentials are checked
  (``SO_PEERCRED``: uid 0, or the helper's own uid) before a byte is read;
* the caller must live in the helper's mount, PID and user namespaces (the state's pid and every path mean the
  same there), be as confined as the helper (capability sets, no_new_privs, seccomp, root directory, LSM label:
  a confined root caller gets no unconfined child), and come from the same install of nvc; ``configure``
  without ``--pid`` (which works on its parent) is left to it too;
* with each start the helper compares its modules' files, nvc's and its dependencies', with what it loaded
  (inode, size, mtime, ctime): after an upgrade or an edit it exits (removing its socket), and its service
  manager starts the new code;
* each start runs in its own child, forked before the start arrives (a spare waiting in ``accept``) and so
  before anything of the caller's is read: a start cannot change the helper or another start, and the child
  exits when the hook is done;
* the child takes on the caller's descriptors, working directory, environment, umask, resource limits and output
  encodings, and lives only as long as its caller: should the launcher die (a runtime's hook timeout kills it),
  the start is killed where it stands with what it started, as it would have been in the launcher's process;
* a start runs only after the launcher's "go" (``G``, answering ``A``): a launcher that stopped waiting closes
  instead, and its start runs in one place only;
* a hook that would exec an external CLI (``[nvidia-container-cli] path``) is declined, so that the launcher
  execs it as it always does.
"""

from __future__ import annotations

import os
import sys

from nvc.helper_probe import SOCKET_NAME
from nvc.hook_client import ACCEPTED, DECLINED, GO, MAGIC, RAN, REASONS, receive_exactly

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: What a container start imports, loaded before the first one (a module missing here is imported by the child).
PRELOAD = (
    "nvc.commands.hook", "nvc.commands.cli_main", "nvc.commands.configure", "nvc.commands.prefilter_memo",
    "nvc.plan.build", "nvc.plan.planner", "nvc.host.inventory", "nvc.host.inventory_cache", "nvc.host.nvml.cache",
    "nvc.host.discovery", "nvc.host.kmods", "nvc.request.container_env", "nvc.request.container_request",
    "nvc.request.runtime_config", "nvc.request.gvisor", "nvc.request.container_layout", "nvc.request.device_select",
    "nvc.apply.executor", "nvc.apply.container_fs", "nvc.apply.cgroups", "nvc.apply.ldcache_update",
    "nvc.apply.ldconfig_exec", "nvc.host.ldcache.writer", "nvc.host.elf", "nvc.atomic_write", "nvc.debuglog",
    "nvc.host.proc_driver", "nvc.request.options",
    # the standard library's, for the hand-over and the caches (private_files.sha256_hex, /proc/PID/status)
    "fcntl", "resource", "socket", "select", "_sha256", "encodings.ascii", "nvc.sys.process",
)
MAX_MESSAGE = 4 << 20  # argv, environment and state: a few KiB in practice
RECEIVE_TIMEOUT_SECONDS = 10.0
_PACKAGE_DIR = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Decline(BaseException):
    """Leave this start to the launcher (a BaseException: the hook's error reporting must not turn it into a line)."""

    def __init__(self, reason: bytes) -> None:
        super().__init__(reason)
        self.reason = reason


def loaded_files(package_dir: str = _PACKAGE_DIR) -> tuple[str, ...]:
    """The files of every module loaded now from outside the package (click, pyelftools, nvidia-ml-py, cffi, the
    standard library): after an upgrade of any of them a child could mix what the helper has in memory with new
    modules it imports itself, so :func:`code_stamp` watches them too."""
    inside = package_dir.rstrip("/") + "/"
    return tuple(sorted({path for module in list(sys.modules.values())
                         if isinstance(path := getattr(module, "__file__", None), str)
                         and not path.startswith(inside)}))


def code_stamp(package_dir: str = _PACKAGE_DIR,
               others: tuple[str, ...] = ()) -> tuple[tuple[str, int, int, int, int], ...]:
    """(path, inode, size, mtime_ns, ctime_ns) of every Python file of the package (walked each time: an upgrade
    may add one) and of ``others`` (:func:`loaded_files`); the inode and ctime too, since a package unpacked by
    dpkg keeps its archive's mtimes. Its own walk rather than the bytecode bundle's module list
    (``_modules``): that one checks each name against extension modules and costs 4x as much, and this runs after
    every start."""
    paths = []
    for directory, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        paths += [os.path.join(directory, name) for name in sorted(files) if name.endswith(".py")]
    out = []
    for path in (*paths, *others):
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, -1, -1, -1, -1))  # gone: a change as well
            continue
        out.append((path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


#: The lines of /proc/PID/status that say how confined a process is: what a start through the helper must share
#: with its caller, or the caller would get more than in its own process.
_CONFINEMENT = ("CapEff:", "CapBnd:", "NoNewPrivs:", "Seccomp:", "Seccomp_filters:")


def _confinement(pid: int | str) -> tuple[object, ...]:
    """How ``pid`` is confined: its capability sets, no_new_privs and seccomp mode and filters (status), its
    root directory and its LSM label (AppArmor, SELinux)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        status = tuple(line.strip() for line in f if line.startswith(_CONFINEMENT))
    root = os.stat(f"/proc/{pid}/root")
    try:
        with open(f"/proc/{pid}/attr/current", "rb") as f:
            label = f.read()
    except OSError:  # no LSM
        label = None
    return status, (root.st_dev, root.st_ino), label


def _namespace(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _receive(conn) -> tuple[dict, list[int]]:
    """The caller's message and descriptors (four: stdin, stdout, stderr, working directory)."""
    import socket

    conn.settimeout(RECEIVE_TIMEOUT_SECONDS)
    fds: list[int] = []
    data = b""
    header = len(MAGIC) + 4
    while len(data) < header or len(data) < header + int.from_bytes(data[len(MAGIC):header], "little"):
        if len(data) > MAX_MESSAGE:
            break
        # CLOEXEC from the start: nothing the hook execs (an image's own ldconfig, chrooted) may inherit them.
        chunk, ancdata, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i:i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
        if not chunk:
            break
        data += chunk
    if not data.startswith(MAGIC) or len(fds) != 4:
        raise _Decline(b"m")
    length = int.from_bytes(data[len(MAGIC):][:4], "little")
    body = data[len(MAGIC) + 4:]
    if len(body) != length:
        raise _Decline(b"m")
    from nvc import jsonfast

    try:
        message = jsonfast.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Decline(b"m") from None
    if (not isinstance(message, dict) or not isinstance(message.get("argv"), list)
            or not all(isinstance(a, str) for a in message["argv"]) or not isinstance(message.get("env"), dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in message["env"].items())
            or not all(isinstance(message.get(k), str) for k in ("state", "tool", "argv0"))
            or sum(isinstance(message.get(k), str) for k in ("package", "python")) != 1
            or type(message.get("umask")) is not int or not 0 <= message["umask"] <= 0o777
            or not isinstance(message.get("stdio"), list) or len(message["stdio"]) != 4
            or not all(isinstance(v, str) for v in message["stdio"])):
        raise _Decline(b"m")
    return message, fds


def _same_install(message: dict) -> bool:
    """Whether the caller would have run this helper's nvc: the Python launcher names its package directory; the
    compiled client (hooks/client/nvc-hook-client.c) the interpreter the launcher would start with -I -S, which
    finds the same package as this helper only if the helper was started the same way (isolated, by a launcher)."""
    if "package" in message:
        return os.path.realpath(message["package"]) == _PACKAGE_DIR
    return sys.flags.isolated == 1 and message["python"] == sys.executable


def _decline_exec(*_args: object) -> None:
    raise _Decline(b"x")


def _run_start(conn, peer_pid: int, log: Callable[[str], None]) -> bytes:
    """In the child: one container start. Returns the last reply (``C`` + status, ``D`` + reason, or nothing when
    the launcher gave up before saying "go"); ``A`` is sent once all checks passed, and the start runs only when
    the launcher answers ``G``."""
    fds: list[int] = []
    try:
        message, fds = _receive(conn)
        if not _same_install(message):
            raise _Decline(b"p")
        if message["tool"] not in ("hook", "cli"):
            raise _Decline(b"t")
        for kind in ("mnt", "pid", "user"):
            if _namespace(peer_pid, kind) != _namespace("self", kind):
                raise _Decline(b"n")
        if _confinement(peer_pid) != _confinement("self"):
            raise _Decline(b"c")  # a confined root caller must not get an unconfined child of ours
        if message["tool"] == "cli" and not any(a == "--pid" or a.startswith("--pid=") for a in message["argv"]):
            raise _Decline(b"q")  # configure without --pid works on its parent process: the launcher's, not ours
        _adopt_limits(peer_pid)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.fchdir(fds[3])
        for fd in fds:  # the caller's descriptors are 0, 1, 2 and the working directory now: no copies linger
            os.close(fd)
        fds = []
        _adopt_streams(message["stdio"])
        os.umask(message["umask"])  # what the hook creates in the container gets the modes it would have had
        os.environ.clear()
        os.environ.update(message["env"])
        sys.argv = [message["argv0"], *message["argv"]]
        conn.sendall(bytes((ACCEPTED,)))
        # The launcher says "go" only if it has not given up waiting: then, and only then, the start is ours.
        if receive_exactly(conn, 1) != bytes((GO,)):
            raise _GaveUp
        _watch_caller(conn, log, peer_pid)
        try:
            if message["tool"] == "hook":
                import io

                sys.stdin = io.TextIOWrapper(io.BytesIO(message["state"].encode("latin-1")), newline="\n")
                from nvc.commands.hook import main

                code = main(message["argv"], exec_cli=_decline_exec)
            else:
                from nvc.commands.cli_main import main

                code = main(message["argv"])
        except SystemExit as exc:  # click's way out, or sys.exit("message") as the interpreter would print it
            code = exc.code
            if code is not None and not isinstance(code, int):
                _write_stderr(f"{code}\n")
                code = 1
        finally:
            _stop_watching()
    except _Decline as exc:
        return bytes((DECLINED,)) + exc.reason
    except _GaveUp:
        return b""
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    code = 0 if code is None else code
    return bytes((RAN, code & 0xFF))  # what the caller's own process would have exited with (status & 0377)


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.write(text)
    except (OSError, ValueError):
        pass


#: The resource limits a start runs under: the caller's (the runtime's), as in the hook's own process.
_LIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
           "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_RSS",
           "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK")


def _adopt_limits(peer_pid: int) -> None:
    """Take the caller's resource limits (a runtime that caps its hooks' files or size caps this start too).
    Not its cgroup: moving a process between cgroups waits for an RCU grace period (7-8 ms measured here, v1 and
    v2 alike), most of what the helper saves; the start's own work is accounted to the helper's service."""
    import resource

    try:
        for name in _LIMITS:
            limit = getattr(resource, name, None)
            if limit is not None:
                resource.setrlimit(limit, resource.prlimit(peer_pid, limit))
    except (OSError, ValueError):
        raise _Decline(b"l") from None


def _adopt_streams(stdio: list[str]) -> None:
    """stdout and stderr on the caller's descriptors with the caller's encodings and error handlers (the helper's
    own locale may differ), buffered as the interpreter would have buffered them."""
    import io

    streams = []
    for fd, (encoding, errors) in ((1, stdio[0:2]), (2, stdio[2:4])):
        try:
            streams.append(io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=encoding, errors=errors,
                                            line_buffering=fd == 2 or os.isatty(fd)))
        except (LookupError, ValueError, OSError):
            raise _Decline(b"m") from None
    sys.stdout, sys.stderr = streams


class _GaveUp(Exception):
    """The launcher closed the connection instead of saying "go" (it stopped waiting and runs the start itself)."""


def _watch_caller(conn, log: Callable[[str], None], peer_pid: int) -> None:
    """Have the kernel signal this child (``SIGIO``, ``O_ASYNC``) when something happens on the connection; the
    launcher sends nothing after "go", so that is its end closing: the runtime killed it (a hook timeout). The start
    then ends as it would have in the launcher's own process, killed where it stands, with the processes it
    started (its process group: the image's ldconfig, the NVML query): the runtime removes the container with
    what was done to it. No exception is raised into the hook's code, which could land in the middle of its
    clean-up or of entering the container's namespace."""
    import fcntl
    import signal
    import socket

    def check(*_args: object) -> None:
        try:
            if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return  # bytes from a caller that should not send any: not a hang-up
        except ConnectionResetError:
            pass  # gone as well
        except OSError:  # EAGAIN: still there
            return
        log(f"start for pid {peer_pid}: its caller went away: stopped")
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    conn.settimeout(None)  # blocking: MSG_DONTWAIT answers at once, rather than the socket's timeout waiting
    signal.signal(signal.SIGIO, check)
    fd = conn.fileno()
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    check()  # gone before the watch was set


def _stop_watching() -> None:
    import signal

    signal.signal(signal.SIGIO, signal.SIG_IGN)


def _spare(listener, log_fd: int, taken_w: int) -> None:
    """A child forked ahead of the next start, so that no fork sits on a start's path: it takes one connection,
    tells the helper (one byte on ``taken_w``: fork the next spare), serves it and exits."""
    import gc
    import signal
    import time

    gc.disable()  # a collection would copy every page shared with the helper; this child lives for one start
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the hook waits for its own children (the NVML helper)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:  # its own process group: a start whose caller is killed goes with what it started (_watch_caller)
        os.setpgid(0, 0)
    except OSError:
        pass
    code = 1
    try:
        _own_pages(listener)
        try:
            conn, _ = listener.accept()
        finally:
            os.write(taken_w, b".")  # taken, or failed: either way the helper forks the next spare
        listener.close()
        with conn:
            peer_pid, uid = _peer(conn)
            if uid not in (0, os.geteuid()) or peer_pid <= 0:
                _log(log_fd, f"refused a caller with uid {uid} (pid {peer_pid})")
                os._exit(0)  # closed without a word
            started = time.monotonic()
            loaded = set(sys.modules)
            try:
                reply = _run_start(conn, peer_pid, lambda line: _log(log_fd, line))
            except BaseException as exc:  # a bug of ours: no reply (the launcher reports it once taken on)
                _log(log_fd, f"start for pid {peer_pid} failed: {type(exc).__name__}: {exc}")
                os._exit(1)
            if not reply:
                _log(log_fd, f"start for pid {peer_pid}: its caller stopped waiting: not run")
                os._exit(0)
            try:
                conn.sendall(reply)
            except OSError:
                pass
            outcome = f"exit {reply[1]}" if reply[0] == RAN else f"declined ({REASONS.get(reply[1], '?')})"
            # Modules the start had to import itself: each costs every start, and PRELOAD should have them.
            imported = sorted(set(sys.modules) - loaded)
            if imported:
                outcome += f", imported {len(imported)} modules: {' '.join(imported[:8])}"
            _log(log_fd, f"start for pid {peer_pid}: {outcome} in {(time.monotonic() - started) * 1000:.1f} ms")
            code = 0
    finally:
        os._exit(code)


def _own_pages(listener) -> None:
    """Copy the pages this spare shares with the helper now, while it waits, rather than one by one during the
    start as it first writes to each (Python writes to nearly every page it reads: reference counts). Measured
    in a child running a start here: 850 such faults, ~3 ms of its ~11; after this, 30. It stops as soon as a
    caller connects: what is left is copied on demand, as without it. Costs the spare ~9 MB of its own memory,
    less than a hook started in its own process."""
    import select

    from nvc.apply.executor import own_shared_pages

    waiting = select.poll()
    waiting.register(listener, select.POLLIN)
    try:
        own_shared_pages(stop=lambda: bool(waiting.poll(0)))
    except Exception:  # no /proc, no FFI: the start copies its pages as it goes
        pass


def _log(fd: int, line: str) -> None:
    try:
        os.write(fd, f"nvc-hook-helper: {line}\n".encode(errors="replace"))
    except OSError:
        pass


def _listen(directory: str):
    """The listening socket, bound under a temporary name and renamed over ``hook.sock`` (a restart replaces the
    old one at once; a caller never connects to a half-made one)."""
    import socket

    from nvc.private_files import open_cache_dir

    dir_fd = open_cache_dir(directory)
    if dir_fd is None:
        raise SystemExit(f"nvc-hook-helper: {directory} is not a directory only this user can write")
    temporary = f".{SOCKET_NAME}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            listener.bind(f"/proc/self/fd/{dir_fd}/{temporary}")
        finally:
            os.umask(old_umask)
        os.chmod(temporary, 0o600, dir_fd=dir_fd, follow_symlinks=False)
        listener.listen(128)
        os.rename(temporary, SOCKET_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        listener.close()
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(dir_fd)
    return listener


def serve(directory: str) -> int:
    """Listen until a module changes on disk (exit 0, for the service manager to restart us) or SIGTERM."""
    import gc
    import select
    import signal

    for name in PRELOAD:
        __import__(name)
    from nvc.apply.executor import preload

    preload()  # the kernel calls' FFI too: loaded once here rather than in each child
    _warm()
    others = loaded_files()
    stamp = code_stamp(others=others)
    listener = _listen(directory)
    st = os.lstat(os.path.join(directory, SOCKET_NAME))
    socket_id = (st.st_dev, st.st_ino)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    gc.collect()
    gc.freeze()  # what is loaded now stays put: the children share its pages untouched
    log_fd = os.dup(2)  # the helper's own log (the journal): each child's fd 2 becomes its caller's stderr
    _log(log_fd, f"listening on {directory}/{SOCKET_NAME} ({len(PRELOAD)} modules loaded)")
    taken_r, taken_w = os.pipe()
    spare = None
    try:
        while True:
            spare = os.fork()
            if spare == 0:
                os.close(taken_r)
                _spare(listener, log_fd, taken_w)
            while not select.select([taken_r], [], [], 1.0)[0]:
                try:  # an idle spare killed from outside (OOM): fork another, or callers would queue forever
                    os.kill(spare, 0)
                except ProcessLookupError:
                    break
            else:
                os.read(taken_r, 1)
            spare = None  # it has a start (or failed): no longer ours to stop
            # While that child works (not before it: 0.6-0.8 ms a start): is what we loaded still on disk? A
            # start that had begun when the files changed is served by the old code, as it would have been had it
            # come a moment earlier; the next finds the socket gone and runs in its launcher until we are back.
            if code_stamp(others=others) != stamp:
                _log(log_fd, "nvc changed on disk: exiting for the new code")
                return 0
            _warm()  # an edited config.toml: parsed here once, not in each child from now on
    finally:
        listener.close()
        _unlink_socket(directory, socket_id)
        # The idle spare would go on accepting on the listener it shares with us; one that has just taken a start
        # (its byte not read yet) finishes it.
        if spare and not select.select([taken_r], [], [], 0)[0]:
            try:
                os.kill(spare, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _warm() -> None:
    """Parse the config.toml this environment names (the default location under systemd), so that the children
    find it in memory (:mod:`nvc.request.runtime_config` keeps parsed configs by the file's identity, checked on
    each use) instead of reading and rebuilding it from the file cache on every start. A config that does not
    load is left for the starts to report."""
    from nvc.request.runtime_config import load_config

    try:
        load_config()
    except Exception:
        pass


def _unlink_socket(directory: str, socket_id: tuple[int, int]) -> None:
    """Remove our socket on the way out, unless a newer helper has already put its own there."""
    path = os.path.join(directory, SOCKET_NAME)
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == socket_id:
            os.unlink(path)
    except OSError:
        pass


def _peer(conn) -> tuple[int, int]:
    """(pid, uid) of the connected process, from the kernel (``struct ucred``), not from anything it sent."""
    import socket

    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(raw[0:4], sys.byteorder, signed=True), int.from_bytes(raw[4:8], sys.byteorder)


def main(argv: list[str] | None = None) -> int:
    """``nvc-hook-helper [--directory DIR]`` (default: the answer cache directory)."""
    from nvc.private_files import cache_dir_path

    args = list(sys.argv[1:] if argv is None else argv)
    directory = cache_dir_path()
    usage = "usage: nvc-hook-helper [--directory DIR]\n"
    if args in (["--help"], ["-h"]):
        sys.stdout.write(usage)
        return 0
    if args[:1] == ["--directory"] and len(args) == 2:
        directory = args[1]
    elif args:
        sys.stderr.write(usage)
        return 2
    if os.geteuid() != 0:
        sys.stderr.write("nvc-hook-helper: must run as root (it configures containers for root's runtimes)\n")
        return 1
    return serve(directory)


if __name__ == "__main__":
    sys.exit(main())
