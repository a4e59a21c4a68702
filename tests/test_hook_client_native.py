"""The hook helper's compiled client (hooks/client/nvc-hook-client.c) against the Python launcher's offer.

The client must send the helper what the Python launcher (nvc/hook_client.py) sends, as the interpreter would
have seen it (its locale coercion, its decoding of the environment, the state as latin-1), and hand the start
back to the launcher, state included, on every doubt. A recording helper stand-in on a private socket directory
takes both offers; the launchers are the test wrappers (fixtures/tools.py), which exec the client as the
installed ones do. The real helper through the client is tested in tests/test_hook_helper.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fixtures.tools import hook_client
from nvc.hook_client import MAGIC, receive_exactly

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the client serves root's socket only (uid check)")


class Recorder:
    """A stand-in helper: records each offer (message and the number of descriptors) and answers with ``script``:
    b"AC\\x07" accepts, waits for "go" and reports status 7; b"Dn" declines; b"A" accepts then closes; b"" closes."""

    def __init__(self, directory: Path, script: bytes) -> None:
        directory.mkdir(mode=0o700)
        self.path = directory / "hook.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(self.path))
        finally:
            os.umask(old)
        self.listener.listen(8)
        self.script = script
        self.messages: list[dict] = []
        self.fd_counts: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data, fds = b"", []
                while len(data) < len(MAGIC) + 4 or len(data) < len(MAGIC) + 4 + int.from_bytes(
                        data[len(MAGIC):len(MAGIC) + 4], "little"):
                    chunk, anc, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4))
                    for _level, _kind, payload in anc:
                        fds += [int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, len(payload), 4)]
                    if not chunk:
                        break
                    data += chunk
                for fd in fds:
                    os.close(fd)
                if not data.startswith(MAGIC):  # connected, then gave up before sending (a state too large)
                    continue
                self.messages.append(json.loads(data[len(MAGIC) + 4:]))
                self.fd_counts.append(len(fds))
                if self.script.startswith(b"A"):
                    conn.sendall(b"A")
                    if receive_exactly(conn, 1) == b"G" and len(self.script) > 1:
                        conn.sendall(self.script[1:])
                elif self.script:
                    conn.sendall(self.script)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def client_tools(tmp_path, tools):
    bindir, env = tools
    return bindir, {**env, "NVC_CACHE_DIR": str(tmp_path / "cache"), "NVC_LAUNCHER_TRACE": "1"}


def _python_locale_environments() -> list[dict[str, str]]:
    return [{}, {"LANG": "C"}, {"LC_ALL": "C"}, {"LC_CTYPE": "POSIX"}, {"LANG": "POSIX"}, {"LC_ALL": "POSIX"},
            {"LANG": "C.UTF-8"}, {"LC_ALL": "C.UTF-8", "LANG": "C"}, {"LANG": "en_US.UTF-8"},
            {"LC_CTYPE": "C.utf8", "LC_ALL": "C"}, {"LC_CTYPE": "nonesuch_XX.UTF-8"}, {"LANG": ""}]


@pytest.mark.parametrize("locale_env", _python_locale_environments(), ids=lambda e: ",".join(map("=".join, e.items()))
                         or "empty")
def test_the_client_sends_what_the_python_launcher_sends(tmp_path, client_tools, locale_env):
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"AC\x07")
    # Every byte in the state (sent as latin-1), and names and values that are not UTF-8, or only nearly
    # (surrogates, overlong forms, truncated sequences), which the interpreter decodes with surrogateescape.
    state = bytes(range(256)) + '{"ünïcode": "✓"}'.encode()
    odd = {b"NVC_ODD": b"\xff\xfe caf\xc3\xa9 \xed\xa0\x80 \xc0\xaf \xe2\x82 \xf4\x90\x80\x80 \xf0\x9f\x98\x80",
           b"NVC_\xe9T\xc3\xa9": b"x\x01\x1f\"\\/"}
    base = {k.encode(): v.encode() for k, v in {**env, **locale_env}.items()}
    try:
        results = {}
        for way, extra in (("client", {}), ("python", {b"NVC_HELPER_CLIENT": b"deferred"})):
            res = subprocess.run([str(bindir / "nvidia-container-runtime-hook"), "prestart"], input=state,
                                 env={**base, **odd, **extra}, capture_output=True, timeout=60, check=False)
            results[way] = res
            assert res.returncode == 7, res.stderr
        assert b"helper=ran (client)" in results["client"].stderr
        assert results["python"].stderr.splitlines() == [b"nvc-launcher: helper=ran"]
    finally:
        recorder.close()
    by_client, by_python = recorder.messages
    assert recorder.fd_counts == [4, 4]
    assert by_client.pop("python") == sys.executable
    assert by_python.pop("package") == str(Path(__file__).resolve().parents[1] / "nvc")
    # The wrappers run Python with -c and name the tool in sys.argv[0]; the client passes the launcher's path.
    assert by_client.pop("argv0") == str(bindir / "nvidia-container-runtime-hook")
    assert by_python.pop("argv0") == "nvidia-container-runtime-hook"
    assert by_client == by_python
    assert by_client["state"].encode("latin-1") == state
    assert by_client["env"]["NVC_ODD"].encode("utf-8", "surrogateescape") == odd[b"NVC_ODD"]


def test_the_cli_offer_is_the_same_too(tmp_path, client_tools):
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"AC\x00")
    try:
        argv = [str(bindir / "nvidia-container-cli"), "--load-kmods", "configure", "--device=0", "--pid=1", "/x y"]
        for extra in ({}, {"NVC_HELPER_CLIENT": "deferred"}):
            res = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True, timeout=60, check=False)
            assert res.returncode == 0, res.stderr
    finally:
        recorder.close()
    by_client, by_python = recorder.messages
    for message in (by_client, by_python):
        message.pop("argv0"), message.pop("package", None), message.pop("python", None)
    assert by_client == by_python
    assert by_client["tool"] == "cli" and by_client["state"] == ""


@pytest.mark.parametrize(("tool", "argv"), [
    ("nvidia-container-runtime-hook", ["prestart"]),
    ("nvidia-container-runtime-hook", ["createRuntime"]),
    ("nvidia-container-runtime-hook", ["poststop"]),
    ("nvidia-container-runtime-hook", ["prestart", "extra"]),
    ("nvidia-container-runtime-hook", ["Prestart"]),
    ("nvidia-container-runtime-hook", []),
    ("nvidia-container-cli", ["--load-kmods", "configure", "--pid=1", "/x"]),
    ("nvidia-container-cli", ["configure"]),
    ("nvidia-container-cli", ["--version"]),
    ("nvidia-container-cli", ["--configure"]),
])
def test_the_client_and_the_python_launcher_offer_the_same_calls(tmp_path, client_tools, tool, argv):
    """Which calls are offered is decided twice (``applies`` in C, ``try_helper``/``try_helper_cli`` in Python):
    the two must agree on every call, offered or not."""
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"AC\x00")
    offered = {}
    try:
        for way, extra in (("client", {}), ("python", {"NVC_HELPER_CLIENT": "deferred"})):
            before = len(recorder.messages)
            subprocess.run([str(bindir / tool), *argv], input=b"{}", env={**env, **extra}, capture_output=True,
                           timeout=60, check=False)
            offered[way] = len(recorder.messages) - before
    finally:
        recorder.close()
    expected = int(argv in (["prestart"], ["createRuntime"]) or "configure" in argv)
    assert offered == {"client": expected, "python": expected}


def _fake_launcher(tmp_path: Path) -> Path:
    """A launcher that shows what the client handed back to it: its stdin, arguments and marker."""
    launcher = tmp_path / "launcher"
    launcher.write_text(f'#!/bin/sh\ncat > {tmp_path}/stdin\necho "$@" > {tmp_path}/args\n'
                        f'echo "${{NVC_HELPER_CLIENT-unset}}" > {tmp_path}/marker\nexit 3\n')
    launcher.chmod(0o755)
    return launcher


def _client(bindir: Path, env: dict[str, str], launcher: Path, *args: str, tool: str = "hook",
            state: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(hook_client(bindir)), tool, sys.executable, str(launcher), *args], input=state,
                          env=env, capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize(("script", "trace", "marker"), [
    (b"Dn", "declined (another namespace)", "offered"),
    (b"", "refused", "offered"),
    (b"ADx", "declined (exec'd CLI)", "offered"),  # after "go", before anything ran: the launcher runs it
])
def test_a_start_the_helper_does_not_take_goes_back_with_its_state(tmp_path, client_tools, script, trace, marker):
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", script)
    state = b'{"pid": 1, "bundle": "/b"}\n' * 5000  # more than a pipe holds: read in full, then handed back
    try:
        res = _client(bindir, env, _fake_launcher(tmp_path), "prestart", state=state)
    finally:
        recorder.close()
    assert res.returncode == 3, res.stderr
    assert f"helper={trace} (client)" in res.stderr.decode()
    assert (tmp_path / "stdin").read_bytes() == state
    assert (tmp_path / "args").read_text() == "prestart\n"
    assert (tmp_path / "marker").read_text() == f"{marker}\n"
    assert len(recorder.messages) == 1


@pytest.mark.parametrize("args", [["poststop"], ["prestart", "extra"], []])
def test_a_call_that_is_not_a_start_goes_back_unasked(tmp_path, client_tools, args):
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"AC\x00")
    try:
        res = _client(bindir, env, _fake_launcher(tmp_path), *args, state=b"untouched")
    finally:
        recorder.close()
    assert res.returncode == 3 and recorder.messages == []
    assert (tmp_path / "stdin").read_bytes() == b"untouched"  # never read: the launcher gets the runtime's pipe
    assert (tmp_path / "marker").read_text() == "deferred\n"


def test_a_socket_others_could_use_is_not_offered_anything(tmp_path, client_tools):
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"AC\x00")
    try:
        os.chmod(recorder.path, 0o666)
        res = _client(bindir, env, _fake_launcher(tmp_path), "prestart", state=b"s")
        assert "helper=untrusted socket (client)" in res.stderr.decode()
        os.chmod(recorder.path, 0o600)
        os.chmod(tmp_path / "cache", 0o777)
        res = _client(bindir, env, _fake_launcher(tmp_path), "prestart", state=b"s")
        assert "helper=untrusted directory (client)" in res.stderr.decode()
    finally:
        recorder.close()
    assert res.returncode == 3 and recorder.messages == []
    assert (tmp_path / "stdin").read_bytes() == b"s"


def test_a_helper_that_ends_after_go_fails_the_start(tmp_path, client_tools):
    """Taken on, then no result: the start fails with one line, never runs a second time in the launcher."""
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"A")
    try:
        res = _client(bindir, env, _fake_launcher(tmp_path), "prestart", state=b"s")
    finally:
        recorder.close()
    assert res.returncode == 1
    assert res.stderr.decode().splitlines()[-1] == (
        "launcher: helper error: the hook helper ended this start without a result "
        "(see its log: journalctl -u nvc-hook-helper)")
    assert not (tmp_path / "stdin").exists()


def test_the_marker_never_reaches_the_hook(tmp_path, client_tools):
    """The Python part takes the client's variable out of the environment before the hook's code sees it."""
    _, env = client_tools
    script = tmp_path / "probe.py"
    script.write_text("import os, posix, sys\nsys.argv[1:] = ['prestart']\nfrom nvc.helper_probe import try_helper\n"
                      "print(try_helper(), 'NVC_HELPER_CLIENT' in os.environ, b'NVC_HELPER_CLIENT' in posix.environ,\n"
                      "      flush=True)\n"
                      "import subprocess; subprocess.run(['sh', '-c', 'echo ${NVC_HELPER_CLIENT-gone}'])\n")
    root = str(Path(__file__).resolve().parents[1])
    for value in ("offered", "deferred"):
        res = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = [{root!r}]; "
                              f"exec(open({str(script)!r}).read())"],
                             env={**env, "NVC_HELPER_CLIENT": value, "NVC_CACHE_DIR": str(tmp_path / "none")},
                             capture_output=True, text=True, timeout=60, check=True)
        assert res.stdout == "None False False\ngone\n", res.stdout


@pytest.mark.parametrize("with_client", [True, False])
def test_the_installed_launcher_execs_the_client_beside_it(tmp_path, with_client):
    """scripts/launchers/ as pip lays them out: the `nvc` script whose shebang names the interpreter, the launcher,
    and (or not) the client; with a helper's socket the launcher execs the client, else it offers in Python."""
    repo = Path(__file__).resolve().parents[1]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvc").write_text(f"#!{sys.executable}\nimport sys\nfrom nvc.commands.cli_main import main\n"
                                "sys.exit(main())\n")
    launcher = bindir / "nvidia-container-cli"
    launcher.write_bytes((repo / "scripts/launchers/nvidia-container-cli").read_bytes())
    launcher.chmod(0o755)
    if with_client:
        hook_client(bindir)
    recorder = Recorder(tmp_path / "cache", b"AC\x05")
    try:
        res = subprocess.run([str(launcher), "configure", "--pid=1", "/r"], capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"], "NVC_CACHE_DIR": str(tmp_path / "cache"),
                                  "NVC_LAUNCHER_TRACE": "1"}, timeout=60, check=False)
    finally:
        recorder.close()
    assert res.returncode == 5, res.stderr
    assert res.stderr.splitlines()[-1] == "nvc-launcher: helper=ran" + (" (client)" if with_client else "")
    assert ("python" in recorder.messages[0]) == with_client
    assert recorder.messages[0]["argv0"] == str(launcher)


def test_a_state_too_large_for_the_helper_goes_back_whole(tmp_path, client_tools):
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"AC\x00")
    state = bytes(range(256)) * (5 << 12)  # 5 MiB: more than the helper takes, read in part before the client knew
    try:
        res = _client(bindir, env, _fake_launcher(tmp_path), "prestart", state=state)
    finally:
        recorder.close()
    assert res.returncode == 3 and recorder.messages == []
    assert (tmp_path / "stdin").read_bytes() == state
    assert (tmp_path / "marker").read_text() == "deferred\n"


def test_an_empty_marker_is_not_sent(tmp_path, client_tools):
    """``NVC_HELPER_CLIENT=`` passes the launcher's test; the Python part would drop it, so the client does."""
    bindir, env = client_tools
    recorder = Recorder(tmp_path / "cache", b"AC\x00")
    try:
        res = _client(bindir, {**env, "NVC_HELPER_CLIENT": ""}, _fake_launcher(tmp_path), "prestart", state=b"{}")
    finally:
        recorder.close()
    assert res.returncode == 0, res.stderr
    assert "NVC_HELPER_CLIENT" not in recorder.messages[0]["env"]
