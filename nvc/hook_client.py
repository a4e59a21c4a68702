"""The hook's launcher hands a container start to the resident hook helper, when one is running and fit to take it.

A Python hook pays for its imports on every container start (6-8 ms of the ~21 it takes here); the helper
(:mod:`nvc.commands.hook_helper`) has them loaded already and forks a child per start that runs the very same hook
code. Once :mod:`nvc.helper_probe` has seen the helper's socket, the launcher offers it the start (:func:`offer`)
before it imports the hook:

* ``None`` means "run the hook in this process", and is the answer to every doubt: no socket, a socket or
  directory that is not root's alone, a refused connection, a helper that declines (the caller lives in another
  mount or PID namespace or comes from another install of nvc, the hook would exec an external CLI), a helper that
  closes the connection before it has taken the start on (it refuses the caller, or it is exiting because its
  code changed on disk). ``NVC_NO_HELPER=1`` skips the helper.
* once the helper has taken the start on, its answer is final: should it end without a result, or the
  connection fail, the start fails with one line, as a failed hook does (running it again here could do part of
  it twice).
* an exit status means the helper's child ran the hook to the end, writing to this process's own stdout and
  stderr (passed over the socket with the working directory) exactly what the hook in this process would have,
  with this process's environment, arguments, umask, resource limits and output encodings.

``nvidia-container-cli configure`` (exec'd by runsc, containerd's oci-hook and NVIDIA's own hook on every start)
goes the same way.

Only :mod:`posix`, :mod:`_socket` (C), :mod:`nvc.private_files` and :mod:`nvc.jsonfast`: this runs before the
hook's modules are loaded. The socket is ``hook.sock`` in the answer cache directory (``/run/nvc``,
``$NVC_CACHE_DIR``), used only when that is a real directory of ours that nobody else can write and the socket is
ours, mode 0600 or stricter.
"""

import posix
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable

MAGIC = b"nvc-hook-helper 2\n"
#: What the helper answers: ``A`` once it would take the start on, to which the launcher says ``G`` ("go": only
#: then is the start the helper's), then ``C`` + the exit status when the hook has run; ``D`` + a reason byte when
#: it declines (before ``A``, or after ``G`` only for an exec'd CLI: nothing ran yet).
ACCEPTED, GO, RAN, DECLINED = ord("A"), ord("G"), ord("C"), ord("D")
#: A helper takes a start on within milliseconds; one that has not in this time is stuck, and its child (if it
#: ever answers) finds the connection closed instead of "go" and does nothing.
ACCEPT_TIMEOUT_SECONDS = 30.0
#: Why a helper declines (the reason byte), for the launcher's trace and the tests.
REASONS = {ord("n"): "another namespace", ord("p"): "another install",
           ord("x"): "exec'd CLI", ord("m"): "bad message", ord("t"): "unknown tool",
           ord("c"): "other confinement", ord("q"): "configure without --pid", ord("l"): "resource limits"}
_S_IFMT, _S_IFSOCK = 0o170000, 0o140000


def _environ() -> "dict[str, str]":
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(encoding, errors): v.decode(encoding, errors) for k, v in posix.environ.items()}


def _take_state() -> bytes:
    """The state the runtime wrote on stdin, leaving ``sys.stdin`` able to give it to the hook again."""
    buffer = getattr(sys.stdin, "buffer", None)
    getvalue = getattr(buffer, "getvalue", None)
    if getvalue is not None:  # the pre-filter read it already and put it back as a BytesIO
        return getvalue()
    import io

    stdin = sys.stdin
    raw = stdin.buffer.read()
    sys.stdin = io.TextIOWrapper(io.BytesIO(raw), encoding=stdin.encoding, errors=stdin.errors, newline="\n")
    return raw


def _stdio() -> "list[str]":
    """How this process would have written its output: the encoding and error handler of stdout and stderr."""
    return [getattr(stream, attribute, None) or default for stream in (sys.stdout, sys.stderr)
            for attribute, default in (("encoding", "utf-8"), ("errors", "strict"))]


def _umask() -> int:
    mask = posix.umask(0o077)
    posix.umask(mask)
    return mask


def offer(directory: bytes, socket_name: str, tool: str, with_state: bool,
          trace: "Callable[[str], None]") -> "int | None":
    """Offer this start to the helper listening on ``socket_name`` in ``directory`` (:mod:`nvc.helper_probe` saw
    it there): the exit status it reports, or ``None`` for "run it here" (the module docstring). ``trace`` is told
    what became of the offer."""
    taken = [False]  # set once the helper has said 'A': from then on no doubt sends the start back here
    try:
        return _offer(directory, socket_name, tool, with_state, trace, taken)
    except Exception:
        if not taken[0]:  # any doubt before the helper took the start on: the tool runs in this process
            trace("error")
            return None
        return _lost(trace)


def _lost(trace: "Callable[[str], None]") -> int:
    """Taken on, then no result: part of the start may have been done. Running it again here could do it twice,
    so the start fails as any failed hook does (the runtime removes the container with what was done to it)."""
    trace("gone before it reported")
    try:
        sys.stderr.write(f"{sys.argv[0].rpartition('/')[2]}: helper error: the hook helper ended this start "
                         "without a result (see its log: journalctl -u nvc-hook-helper)\n")
    except Exception:  # a stderr gone too: the status still says it failed
        pass
    return 1


def _offer(directory: bytes, socket_name: str, tool: str, with_state: bool,
           trace: "Callable[[str], None]", taken: "list[bool]") -> "int | None":
    from nvc.private_files import open_cache_dir

    # The cache directory's own rule (ours, not group/world-writable, no symlink); a launcher never creates it.
    dir_fd = open_cache_dir(directory.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()),
                            create=False)
    if dir_fd is None:
        trace("untrusted directory")
        return None
    cwd_fd = None
    try:
        try:
            st = posix.stat(socket_name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            trace("absent")
            return None
        if st.st_mode & _S_IFMT != _S_IFSOCK or st.st_uid != posix.geteuid() or st.st_mode & 0o077:
            trace("untrusted socket")
            return None
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            try:  # through the directory we checked, not its path again
                sock.connect(f"/proc/self/fd/{dir_fd}/{socket_name}")
            except OSError:
                trace("not listening")
                return None
            state = _take_state() if with_state else b""
            from nvc import jsonfast

            payload = jsonfast.dumps({
                "package": __file__.rpartition("/")[0],
                "tool": tool,
                "argv0": sys.argv[0],
                "argv": sys.argv[1:],
                "env": _environ(),
                "umask": _umask(),
                "stdio": _stdio(),
                "state": state.decode("latin-1"),  # bytes as they came, whatever their encoding
            }).encode()
            cwd_fd = posix.open(".", posix.O_PATH | posix.O_CLOEXEC)
            fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2, cwd_fd))
            message = MAGIC + len(payload).to_bytes(4, "little") + payload
            sent = sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            if sent < len(message):
                sock.sendall(message[sent:])
            sock.settimeout(ACCEPT_TIMEOUT_SECONDS)  # a helper that cannot take the start: run it here
            try:
                reply = receive_exactly(sock, 1)
            except TimeoutError:
                trace("no answer")
                return None
            sock.settimeout(None)
            accepted = reply == bytes((ACCEPTED,))
            if accepted:
                # Within the time we wait: the start is the helper's from this byte on (one that comes too late
                # finds the connection closed, unanswered, and runs nothing).
                sock.sendall(bytes((GO,)))
                taken[0] = True
                reply = receive_exactly(sock, 2)
            elif reply:
                reply += receive_exactly(sock, 1)
        finally:
            sock.close()
    finally:
        posix.close(dir_fd)
        if cwd_fd is not None:
            posix.close(cwd_fd)
    if len(reply) == 2 and reply[0] == RAN:
        trace("ran")
        return reply[1]
    if len(reply) == 2 and reply[0] == DECLINED:
        trace(f"declined ({REASONS.get(reply[1], 'unknown')})")
        return None
    if not accepted:  # closed without a word: not a caller it serves, or it is going away
        trace("refused")
        return None
    return _lost(trace)


def receive_exactly(sock, count: int) -> bytes:
    """``count`` bytes from ``sock``, or fewer if it closes first (both ends of the helper's protocol use it)."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data
