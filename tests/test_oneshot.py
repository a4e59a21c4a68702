"""nvc/oneshot.py: a one-shot process ends without teardown only when nothing is lost by it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(body: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.path.insert(0, {str(REPO)!r})\nfrom nvc import oneshot\n{body}"
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_end_flushes_buffered_output_and_keeps_the_code():
    res = _run("sys.stdout.write('out'); sys.stderr.write('err')\n"
               "import atexit\nassert not oneshot.teardown_needed()\nsys.exit(oneshot.end(3) + 100)")  # fmt: skip
    assert (res.returncode, res.stdout, res.stderr) == (3, "out", "err")  # ended inside end(): not 103


def test_an_atexit_handler_still_runs():
    res = _run("import atexit\natexit.register(lambda: print('handler ran'))\n"
               "assert oneshot.teardown_needed()\nsys.exit(oneshot.end(4) + 1)")  # fmt: skip
    assert (res.returncode, res.stdout) == (5, "handler ran\n")


def test_a_running_thread_is_waited_for():
    res = _run("import threading, time\n"
               "t = threading.Thread(target=lambda: (time.sleep(0.3), print('thread done')))\nt.start()\n"
               "assert oneshot.teardown_needed()\nsys.exit(oneshot.end(0))")  # fmt: skip
    assert (res.returncode, res.stdout) == (0, "thread done\n")


def test_a_closed_stdout_ends_the_usual_way():
    res = _run("sys.stdout.write('x' * 10)\nsys.stdout.close()\nsys.exit(oneshot.end(2) + 1)")
    assert res.returncode == 3  # returned, not _exit(2)


def test_not_a_plain_status_is_returned():
    res = _run("print(oneshot.end(None), oneshot.end(300), oneshot.end('no'), sep=',')")
    assert (res.returncode, res.stdout) == (0, "None,300,no\n")


def test_begin_turns_the_cycle_collector_off():
    res = _run("import gc\nassert gc.isenabled()\noneshot.begin()\nprint(gc.isenabled())")
    assert res.stdout == "False\n"


def test_entry_points_called_with_argv_return():
    """A test (or any caller) that passes argv gets the code back and a process that goes on."""
    res = _run("import gc\nfrom nvc.commands.hook import main as hook\nfrom nvc.commands.cli_main import main as cli\n"
               "print(hook(['poststart']), cli(['--version']) , gc.isenabled())")  # fmt: skip
    assert res.returncode == 0
    assert res.stdout.splitlines()[-1] == "0 0 True"
