"""One-shot container-start processes: no cycle collector while they run, no interpreter teardown when they end.

The hook and ``nvidia-container-cli configure`` run once per container start and live for tens of milliseconds.
Two pieces of the interpreter's housekeeping cost them time and buy nothing:

- The cycle collector runs every 700 net allocations, and the imports and the plan allocate tens of thousands of
  objects, so it walks them repeatedly (~1 ms a start here). Reference counting still frees everything acyclic; the
  few cycles (classes, modules) live until exit anyway. :func:`begin` turns it off.
- The interpreter's finalisation (clearing ~80 modules, cffi's included, and what they hold) costs ~2 ms and does
  nothing of ours: files are written through raw fds or ``with`` blocks and renamed, the debug log flushes each
  line, the executor's undo log is committed or rolled back (and the cgroup change undone) before the entry point
  returns. :func:`end` flushes stdout and stderr and calls ``_exit`` -- only when that is safe: the streams
  flushed, no ``atexit`` handler registered (a test's import report, a library's clean-up), no second thread.
  Otherwise it returns the code and ``sys.exit`` ends the process the usual way.

Entry points use both only when run as the program (``argv is None``), never when a test calls ``main([...])``.
"""

from __future__ import annotations

import sys


def begin() -> None:
    """Turn the cycle collector off for the rest of this short process."""
    import gc  # built in: no file is read

    gc.disable()


def teardown_needed() -> bool:
    """True when the normal exit still has work to do: a registered ``atexit`` handler or another thread."""
    import atexit  # built in: no file is read

    if atexit._ncallbacks():  # CPython's count; there is no public way to ask
        return True
    threading = sys.modules.get("threading")
    return threading is not None and threading.active_count() > 1


def end(code: int) -> int:
    """Flush stdout and stderr and end the process with ``code`` now; returns ``code`` (for ``sys.exit``) when it
    is not a plain exit status, the streams cannot be flushed or :func:`teardown_needed` says so."""
    import posix

    if type(code) is not int or not 0 <= code <= 255:
        return code
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):  # a closed pipe: the normal exit reports it as it always did
        return code
    if teardown_needed():
        return code
    posix._exit(code)
    return code  # not reached
