"""The resident hook helper (nvc/commands/hook_helper.py) and its client in the launchers (nvc/hook_client.py).

Real parts: the helper runs as its own process on a private socket directory; the hook and the CLI are the
wrappers a runtime finds on PATH (fixtures/tools.py, the launchers' logic); containers are started by runc or are
held mount namespaces that the CLI configures. Each test checks both sides: what the caller got, and what the
helper's log says it did (so a test cannot pass because everything silently ran in the caller).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.rootfs import busybox_rootfs, copy_rootfs, safe_rmtree
from fixtures.runtimes import make_bundle, run_runc, unique_id
from fixtures.systemd_units import stand_in_binary, verify_units
from fixtures.tools import REPO, _site_dirs, install_tools, point_tools_at
from tests.test_e2e_runtimes import assert_gpu_container, gpu_bundle, hook_entry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, runc)")


class Helper:
    """A running helper on its own socket directory; ``env`` is the runtime's environment that reaches it."""

    def __init__(self, tmp: Path, env: dict[str, str], tree: Path = REPO) -> None:
        self.directory = tmp / "helper-cache"
        self.directory.mkdir(mode=0o700)
        self.env = {**env, "NVC_CACHE_DIR": str(self.directory), "NVC_LAUNCHER_TRACE": "1"}
        self.log = tmp / "helper.log"
        path = [str(tree), *_site_dirs()]
        code = f"import sys; sys.path[:0] = {path!r}; from nvc.commands.hook_helper import main; sys.exit(main())"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], env=self.env, stderr=log,
                                         stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while "listening on" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the helper did not start"
            time.sleep(0.05)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_for(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines()):
            assert time.monotonic() < deadline, f"{text!r} not in the helper's log: {self.lines()}"
            time.sleep(0.02)

    def children(self) -> list[int]:
        return _children_of(self.proc.pid)

    def stop(self) -> None:
        """Stop it as systemd would, and check that its waiting spare child went with it."""
        spares = self.children()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in spares):
            assert time.monotonic() < deadline, f"the helper left {spares} behind"
            time.sleep(0.02)


def _children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _config_variant(bindir: Path, path: Path, cli_lines: str, tail: str = "") -> Path:
    """The tools' config.toml with ``cli_lines`` added to its ``[nvidia-container-cli]`` table and ``tail`` after
    it, written to ``path``."""
    path.write_text((bindir / "config.toml").read_text().replace(
        "[nvidia-container-cli]\n", f"[nvidia-container-cli]\n{cli_lines}") + tail)
    return path


@pytest.fixture
def helper(tmp_path, tools):
    running = Helper(tmp_path, tools[1])
    deadline = time.monotonic() + 10
    while len(running.children()) != 1:  # the spare, forked before any start arrives
        assert time.monotonic() < deadline, running.children()
        time.sleep(0.01)
    yield running
    running.stop()
    assert not (running.directory / "hook.sock").exists()  # removed on the way out


def held_namespace() -> subprocess.Popen:
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    while os.readlink(f"/proc/{proc.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        time.sleep(0.001)
    return proc


def mounts_in(pid: int, below: Path) -> list[str]:
    table = subprocess.run(["nsenter", "-t", str(pid), "-m", "cat", "/proc/self/mountinfo"], capture_output=True,
                           text=True, check=True).stdout
    return sorted(line.split()[4] for line in table.splitlines() if line.split()[4].startswith(str(below)))


def run_hook(bindir: Path, env: dict[str, str], bundle: Path, pid: int,
             prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """The hook's launcher on ``bundle``'s state (``prefix``: a command it runs under, e.g. ``unshare -m``)."""
    state = json.dumps({"ociVersion": "1.0.2", "id": "h", "pid": pid, "bundle": str(bundle)})
    return subprocess.run([*prefix, str(bindir / "nvidia-container-runtime-hook"), "prestart"], input=state, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def plain_bundle(tmp_path: Path) -> Path:
    """A bundle of a container that asks for no GPU: the hook decides and leaves it alone."""
    bundle = tmp_path / "bundle"
    make_bundle(bundle, copy_rootfs(busybox_rootfs(), bundle / "rootfs"), ["true"], env=["PATH=/bin"])
    return bundle


def test_runc_start_goes_through_the_helper(tmp_path, tools, helper):
    bindir, _ = tools
    bundle = gpu_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=1"], {"prestart": [hook_entry(bindir, "prestart")]})
    res = run_runc(bundle, unique_id(), env=helper.env)
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)
    helper.wait_for("exit 0")
    safe_rmtree(bundle)


def test_the_helper_does_what_the_hook_does_in_its_own_process(tmp_path, tools, helper):
    """Same mounts in the container every way: through the compiled client, through the Python launcher's offer
    (what the client leaves to it with "deferred"), in the hook's own process; the trace says which way it went."""
    bindir, _ = tools
    results = {}
    for way, extra in (("helper", {}), ("python-offer", {"NVC_HELPER_CLIENT": "deferred"}),
                       ("in-process", {"NVC_NO_HELPER": "1"})):
        bundle = tmp_path / way
        make_bundle(bundle, copy_rootfs(busybox_rootfs(), bundle / "rootfs"), ["true"],
                    env=["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"])
        holder = held_namespace()
        try:
            res = run_hook(bindir, {**helper.env, **extra}, bundle, holder.pid)
            assert res.returncode == 0, res.stderr
            results[way] = ([m.replace(str(bundle), "") for m in mounts_in(holder.pid, bundle)], res.stderr)
        finally:
            holder.kill()
            holder.wait()
        safe_rmtree(bundle)
    assert "nvc-launcher: helper=ran (client)" in results["helper"][1]
    assert results["python-offer"][1].splitlines() == ["nvc-launcher: helper=ran"]
    assert "helper=" not in results["in-process"][1]
    assert results["helper"][0] == results["in-process"][0] and len(results["helper"][0]) > 10
    assert results["python-offer"][0] == results["in-process"][0]


@pytest.mark.parametrize("way", ["client", "python"])
def test_cli_configure_goes_through_the_helper(tmp_path, tools, helper, way):
    bindir, _ = tools
    rootfs = copy_rootfs(busybox_rootfs(), tmp_path / "rootfs")
    env = {**helper.env, "NVC_HELPER_CLIENT": "deferred"} if way == "python" else helper.env
    holder = held_namespace()
    try:
        res = subprocess.run([str(bindir / "nvidia-container-cli"), "--load-kmods", "configure", "--device=0",
                              "--utility", f"--pid={holder.pid}", str(rootfs)], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stderr.splitlines() == ["nvc-launcher: helper=ran" + (" (client)" if way == "client" else "")]
        assert any(m.endswith("/usr/bin/nvidia-smi") for m in mounts_in(holder.pid, rootfs))
    finally:
        holder.kill()
        holder.wait()
    helper.wait_for("exit 0")
    safe_rmtree(tmp_path / "rootfs")


def test_a_failed_start_is_the_same_one_line_error(tmp_path, tools, helper):
    bindir, _ = tools
    bundle = gpu_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=7"], {"prestart": [hook_entry(bindir, "prestart")]})
    res = run_runc(bundle, unique_id(), env=helper.env)
    assert res.returncode != 0
    assert "nvidia-container-runtime-hook: device error: 7: unknown device" in res.stderr
    assert "Traceback" not in res.stderr
    helper.wait_for("exit 1")
    safe_rmtree(bundle)


def test_a_caller_in_another_mount_namespace_is_declined(tmp_path, tools, helper):
    """The helper would resolve the state's paths in its own namespace: it leaves such a start to the launcher."""
    bindir, _ = tools
    bundle = plain_bundle(tmp_path)
    res = run_hook(bindir, helper.env, bundle, os.getpid(), prefix=("unshare", "-m"))
    assert res.returncode == 0, res.stderr
    assert "helper=declined (another namespace)" in res.stderr
    helper.wait_for("declined (another namespace)")
    safe_rmtree(bundle)


def _as_nobody(fd: int, then) -> int:
    """Exit status of a child that drops to uid/gid 65534 and runs ``then(path of the socket)`` (its result: 0
    for what the test expects). The socket is reached through an fd of its directory, so that the temporary
    directories above it (root's, 0700) are not in the way: only the directory's and the socket's modes are."""
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os._exit(then(f"/proc/self/fd/{fd}/hook.sock"))
        except BaseException:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


def _cannot_connect(path: str) -> int:
    try:
        socket.socket(socket.AF_UNIX).connect(path)
    except PermissionError:
        return 0
    return 1


def _connected_then_closed_unanswered(path: str) -> int:
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    client.settimeout(10)
    return 0 if client.recv(2) == b"" else 1


def test_another_user_is_refused_and_the_helper_carries_on(tmp_path, tools, helper):
    fd = os.open(helper.directory, os.O_PATH)
    try:
        # Not even allowed to connect: the directory is 0700, the socket 0600, both root's...
        assert _as_nobody(fd, _cannot_connect) == 0
        # ...and when both are opened up, the helper still refuses the caller by its credentials.
        helper.directory.chmod(0o711)
        (helper.directory / "hook.sock").chmod(0o666)
        assert _as_nobody(fd, _connected_then_closed_unanswered) == 0
    finally:
        os.close(fd)
    helper.wait_for("refused a caller with uid 65534")
    (helper.directory / "hook.sock").chmod(0o600)
    helper.directory.chmod(0o700)
    test_runc_start_goes_through_the_helper(tmp_path, tools, helper)  # still serving root


def test_the_launcher_ignores_a_socket_others_could_have_made(tmp_path, tools):
    """A socket that is not root's alone (mode 0666 here) is never connected to: the hook runs in its process."""
    bindir, env = tools
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(directory / "hook.sock"))
    listener.listen(1)
    (directory / "hook.sock").chmod(0o666)
    bundle = plain_bundle(tmp_path)
    res = run_hook(bindir, {**env, "NVC_CACHE_DIR": str(directory), "NVC_LAUNCHER_TRACE": "1"}, bundle, os.getpid())
    assert res.returncode == 0, res.stderr
    assert "helper=untrusted socket" in res.stderr
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()
    safe_rmtree(bundle)


def test_changed_code_makes_the_helper_exit_and_the_launcher_carry_on(tmp_path, host):
    """After an upgrade (here: a module edited in a copy of the package) the helper goes away for its service
    manager to start the new code; the next start runs in its launcher."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "nvc", tree / "nvc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "scripts/launchers", tree / "scripts/launchers")
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    bindir = tmp_path / "bin"
    env = install_tools(bindir, host)
    point_tools_at(bindir, tree)
    running = Helper(tmp_path, env, tree)
    try:
        bundle = plain_bundle(tmp_path)
        assert "helper=ran" in run_hook(bindir, running.env, bundle, os.getpid()).stderr
        errors = tree / "nvc/errors.py"
        errors.write_text(errors.read_text() + "\n")
        run_hook(bindir, running.env, bundle, os.getpid())  # served by the old code, which then notices
        running.proc.wait(timeout=30)
        assert running.proc.returncode == 0
        assert any("nvc changed on disk" in line for line in running.lines())
        res = run_hook(bindir, running.env, bundle, os.getpid())
        assert res.returncode == 0, res.stderr
        assert "helper=absent" in res.stderr
    finally:
        running.stop()


@pytest.mark.parametrize("way", ["client", "python"])
def test_a_caller_from_another_install_is_declined(tmp_path, host, helper, way):
    """The launcher of another copy of nvc (another venv, a distribution package) must not be served this one's
    code: the helper declines, the launcher runs its own. The Python launcher names its package; the compiled
    client the interpreter the launcher would start (another venv's, here a link to the same binary)."""
    tree = tmp_path / "other"
    shutil.copytree(REPO / "nvc", tree / "nvc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "scripts/launchers", tree / "scripts/launchers")
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    bindir = tmp_path / "other-bin"
    install_tools(bindir, host)
    point_tools_at(bindir, tree)
    env = dict(helper.env)
    if way == "client":
        other_python = tmp_path / "other-venv/bin/python"
        other_python.parent.mkdir(parents=True)
        other_python.symlink_to(sys.executable)
        wrapper = bindir / "nvidia-container-runtime-hook"
        wrapper.write_text(wrapper.read_text().replace(f" hook {sys.executable} ", f" hook {other_python} "))
    else:
        env["NVC_HELPER_CLIENT"] = "deferred"  # what the client leaves when the Python launcher is to offer it
    bundle = plain_bundle(tmp_path)
    res = run_hook(bindir, env, bundle, os.getpid())
    assert res.returncode == 0, res.stderr
    assert "helper=declined (another install)" in res.stderr
    assert ("(client)" in res.stderr) == (way == "client"), res.stderr


def test_the_unit_passes_systemds_verifier(tmp_path):
    unit = REPO / "hooks/nvc-hook-helper.service"
    binary = stand_in_binary(tmp_path / "bin/nvc-hook-helper")
    units = tmp_path / "units"
    units.mkdir()
    (units / unit.name).write_text(unit.read_text().replace("/usr/local/bin/nvc-hook-helper", str(binary)))
    res = verify_units(units, unit.name)
    if res is None:
        pytest.skip("systemd-analyze not installed")
    assert res.returncode == 0, res.stderr
    assert "hook-helper" in unit.read_text()


def test_the_launcher_looks_where_the_caches_live():
    from nvc import helper_probe, private_files

    assert helper_probe.DEFAULT_CACHE_DIR == private_files.DEFAULT_CACHE_DIR
    assert helper_probe.NO_HELPER_ENV == "NVC_NO_HELPER"


def _log_mode_after_a_start(tmp_path: Path, bindir: Path, env: dict[str, str], way: str, umask: str):
    """The mode the hook's debug log file (``[nvidia-container-cli] debug``, created by the start) gets when the
    hook runs with ``umask``; and the launcher's trace."""
    log = tmp_path / f"{way}.log"
    config = _config_variant(bindir, tmp_path / f"{way}.toml", f'debug = "{log}"\n')
    bundle = tmp_path / way
    make_bundle(bundle, copy_rootfs(busybox_rootfs(), bundle / "rootfs"), ["true"],
                env=["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=utility"])
    holder = held_namespace()
    state = json.dumps({"ociVersion": "1.0.2", "id": "h", "pid": holder.pid, "bundle": str(bundle)})
    try:
        res = subprocess.run(["sh", "-c", f"umask {umask}; exec {bindir}/nvidia-container-runtime-hook prestart"],
                             input=state, env={**env, "NVIDIA_CTK_CONFIG_FILE_PATH": str(config)},
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
    finally:
        holder.kill()
        holder.wait()
    safe_rmtree(bundle)
    return log.stat().st_mode & 0o777, res.stderr


def test_the_start_runs_with_the_callers_umask(tmp_path, tools, helper):
    """What the start creates (here the debug log) gets the mode it would get in the hook's own process: the
    caller's umask, not the helper's."""
    bindir, _ = tools
    for mask, mode in (("022", 0o644), ("077", 0o600)):
        alone, trace = _log_mode_after_a_start(tmp_path, bindir, {**helper.env, "NVC_NO_HELPER": "1"},
                                               f"in-process-{mask}", mask)
        assert (alone, "helper=" in trace) == (mode, False)
        helped, trace = _log_mode_after_a_start(tmp_path, bindir, helper.env, f"helper-{mask}", mask)
        assert (helped, "helper=ran" in trace) == (mode, True)


def test_starts_at_the_same_time_are_each_served(tmp_path, tools, helper):
    """Four hooks at once: each gets its own child (the next spare is forked as soon as one is taken)."""
    from concurrent.futures import ThreadPoolExecutor

    bindir, _ = tools
    holders, bundles = [], []
    for i in range(4):
        bundle = tmp_path / f"b{i}"
        make_bundle(bundle, copy_rootfs(busybox_rootfs(), bundle / "rootfs"), ["true"],
                    env=["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=utility"])
        bundles.append(bundle)
        holders.append(held_namespace())
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: run_hook(bindir, helper.env, bundles[i], holders[i].pid), range(4)))
        for i, res in enumerate(results):
            assert res.returncode == 0 and "helper=ran" in res.stderr, res.stderr
            assert any(m.endswith("/usr/bin/nvidia-smi") for m in mounts_in(holders[i].pid, bundles[i]))
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert sum("exit 0" in line for line in helper.lines()) == 4
    for bundle in bundles:
        safe_rmtree(bundle)


@pytest.mark.parametrize("confinement", [("--bounding-set=-all", "--inh-caps=-all"), ("--no-new-privs",)],
                         ids=["fewer capabilities", "no_new_privs"])
def test_a_more_confined_caller_is_declined(tmp_path, tools, helper, confinement):
    """uid 0 is not enough: a caller whose capability sets or no_new_privs differ from the helper's (as would its
    seccomp filters, root directory or LSM label) runs its start itself, with the confinement it has."""
    bindir, _ = tools
    bundle = plain_bundle(tmp_path)
    res = run_hook(bindir, helper.env, bundle, os.getpid(), prefix=("setpriv", *confinement))
    assert "helper=declined (other confinement)" in res.stderr, res.stderr
    helper.wait_for("declined (other confinement)")
    safe_rmtree(bundle)


def test_configure_without_pid_is_declined(tmp_path, tools, helper):
    """Without --pid configure works on its parent process, which in the helper would be the helper."""
    bindir, _ = tools
    rootfs = copy_rootfs(busybox_rootfs(), tmp_path / "rootfs")
    res = subprocess.run([str(bindir / "nvidia-container-cli"), "configure", "--dry-run", "--device=0", "--utility",
                          str(rootfs)], env=helper.env, capture_output=True, text=True, timeout=60, check=False)
    assert "helper=declined (configure without --pid)" in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr
    safe_rmtree(tmp_path / "rootfs")



def test_a_warm_start_imports_nothing_the_helper_has_not_loaded(tmp_path, tools, helper):
    """The helper saves a start's imports only if it has them all (PRELOAD): a start with the caches filled, hook
    or CLI, must load no module of its own (the child logs any it had to import)."""
    bindir, _ = tools
    for round_ in range(2):  # the first may fill the inventory and NVML caches (modules of a cold start)
        bundle = tmp_path / f"b{round_}"
        make_bundle(bundle, copy_rootfs(busybox_rootfs(), bundle / "rootfs"), ["true"],
                    env=["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"])
        holder = held_namespace()
        try:
            assert "helper=ran" in run_hook(bindir, helper.env, bundle, holder.pid).stderr
            res = subprocess.run([str(bindir / "nvidia-container-cli"), "configure", "--device=0", "--utility",
                                  "--compute", f"--pid={holder.pid}", str(bundle / "rootfs")], env=helper.env,
                                 capture_output=True, text=True, timeout=60, check=False)
            assert res.returncode == 0 and "helper=ran" in res.stderr, res.stderr
        finally:
            holder.kill()
            holder.wait()
        safe_rmtree(bundle)
    deadline = time.monotonic() + 10  # each child logs after its reply: wait for the fourth line
    while len(starts := [line for line in helper.lines() if "start for pid" in line]) < 4:
        assert time.monotonic() < deadline, starts
        time.sleep(0.02)
    assert len(starts) == 4, starts
    assert not any("imported" in line for line in starts[2:]), starts


def _processes_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _with_image_ldconfig(bundle: Path, bindir: Path, script: str) -> tuple[Path, dict[str, str]]:
    """A GPU container whose image's ``/sbin/ldconfig`` is the shell ``script``, and the environment that has the
    hook run it (the config's ``ldconfig`` pointing into the container, which the config must allow)."""
    rootfs = copy_rootfs(busybox_rootfs(), bundle / "rootfs")
    ldconfig = rootfs / "sbin/ldconfig"
    ldconfig.unlink()  # a hard link into the fixture's cache: replaced, never written through
    ldconfig.write_text(f"#!/bin/sh\n{script}\n")
    ldconfig.chmod(0o755)
    make_bundle(bundle, rootfs, ["true"], env=["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=utility"])
    config = _config_variant(bindir, bundle.with_name(bundle.name + ".toml"), 'ldconfig = "/sbin/ldconfig"\n',
                             "\n[features]\nallow-ldconfig-from-container = true\n")
    return bundle, {"NVC_EXEC_LDCONFIG": "1", "NVIDIA_CTK_CONFIG_FILE_PATH": str(config)}


def test_the_start_runs_with_the_callers_resource_limits(tmp_path, tools, helper):
    """A runtime that limits its hooks limits the start in the helper alike: the image's ldconfig (exec'd by the
    start, which leaves the core size alone) sees the launcher's limit, as it does in the launcher's own process."""
    bindir, _ = tools
    seen = {}
    for way, extra in (("in-process", {"NVC_NO_HELPER": "1"}), ("helper", {})):
        bundle, env = _with_image_ldconfig(tmp_path / way, bindir, "ulimit -c > /core-limit")
        holder = held_namespace()
        try:
            res = run_hook(bindir, {**helper.env, **env, **extra}, bundle, holder.pid,
                           prefix=("prlimit", "--core=409600:819200"))
            assert res.returncode == 0, res.stderr
            assert ("helper=ran" in res.stderr) == (way == "helper")
        finally:
            holder.kill()
            holder.wait()
        seen[way] = (bundle / "rootfs/core-limit").read_text()
        safe_rmtree(bundle)
    assert seen["helper"] == seen["in-process"] != resource_core_limit_text()


def resource_core_limit_text() -> str:
    return subprocess.run(["sh", "-c", "ulimit -c"], capture_output=True, text=True, check=True).stdout


def test_a_start_whose_caller_is_killed_is_killed_with_what_it_started(tmp_path, tools, helper):
    """The runtime kills a hook that overruns its timeout. In its own process the hook dies with it; in the helper
    the start must stop too, not go on mounting into a container being torn down: the child notices the closed
    connection, logs why and is killed where it stands with its process group (the image's ldconfig here)."""
    bindir, _ = tools
    bundle, env = _with_image_ldconfig(tmp_path / "slow", bindir, "exec sleep 97")
    rootfs = bundle / "rootfs"
    holder = held_namespace()
    state = json.dumps({"ociVersion": "1.0.2", "id": "h", "pid": holder.pid, "bundle": str(bundle)})
    before = set(_processes_named("sleep"))
    try:
        caller = subprocess.Popen([str(bindir / "nvidia-container-runtime-hook"), "prestart"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env={**helper.env, **env})
        caller.stdin.write(state.encode())
        caller.stdin.close()
        deadline = time.monotonic() + 30
        while not set(_processes_named("sleep")) - before:  # mounted, now in the image's ldconfig
            assert caller.poll() is None, caller.stderr.read()
            assert time.monotonic() < deadline, "the start never reached ldconfig"
            time.sleep(0.01)
        assert mounts_in(holder.pid, rootfs)
        busy = [pid for pid in helper.children() if _children_of(pid)]  # the child running the start
        assert len(busy) == 1
        caller.kill()
        caller.wait()
        caller.stderr.close()
        helper.wait_for("its caller went away: stopped")
        deadline = time.monotonic() + 10
        while set(_processes_named("sleep")) - before or Path(f"/proc/{busy[0]}").exists():
            assert time.monotonic() < deadline, "the start or the image's ldconfig outlived its caller"
            time.sleep(0.01)
        assert not any("exit" in line for line in helper.lines() if "start for pid" in line)
    finally:
        holder.kill()
        holder.wait()
    safe_rmtree(bundle)


def test_a_launcher_that_stopped_waiting_has_its_start_run_nowhere_else(tmp_path, helper):
    """The launcher gives up waiting for the helper after 30 s and runs the start itself. A helper that answers
    just after must not run it too: it gets no "go" (the connection closes) and does nothing."""
    from nvc import hook_client

    bundle = gpu_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=0"], {})
    holder = held_namespace()
    state = json.dumps({"ociVersion": "1.0.2", "id": "h", "pid": holder.pid, "bundle": str(bundle)})
    payload = json.dumps({"package": str(Path(hook_client.__file__).parent), "tool": "hook",
                          "argv0": "nvidia-container-runtime-hook", "argv": ["prestart"], "env": helper.env,
                          "umask": 0o022, "state": state, "stdio": ["utf-8", "strict", "utf-8", "backslashreplace"]})
    message = hook_client.MAGIC + len(payload).to_bytes(4, "little") + payload.encode()
    cwd = os.open(".", os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(helper.directory / "hook.sock"))
            sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd)))])
            assert sock.recv(1) == b"A"
        helper.wait_for("its caller stopped waiting: not run")
        assert mounts_in(holder.pid, bundle / "rootfs") == []
    finally:
        os.close(cwd)
        holder.kill()
        holder.wait()
    safe_rmtree(bundle)


@pytest.mark.parametrize("after_go", [True, False], ids=["reset after go", "closed before go"])
def test_errors_after_go_fail_the_start_errors_before_it_run_it_here(tmp_path, monkeypatch, after_go):
    """Once the launcher has said "go" the start is the helper's: a connection reset then is a failed start, one
    line, exit 1 (part of it may have been done; running it here could do it twice). A helper that went away after
    'A' but before "go" ran nothing: the launcher runs the start itself."""
    import io
    import select
    import threading

    from nvc import hook_client

    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "hook.sock"))
    os.chmod(directory / "hook.sock", 0o600)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        header = len(hook_client.MAGIC) + 4
        data = b""
        while len(data) < header or len(data) < header + int.from_bytes(data[len(hook_client.MAGIC):header], "little"):
            data += conn.recv(1 << 16)
        conn.sendall(b"A")
        if after_go:  # "go" arrived, left unread: closing now resets the launcher's end (ECONNRESET)
            select.select([conn], [], [], 10)
        conn.close()

    traces: list[str] = []
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"{}")))
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        code = hook_client.offer(str(directory).encode(), "hook.sock", "hook", True, traces.append)
    finally:
        thread.join()
        listener.close()
    assert (code, traces) == ((1, ["gone before it reported"]) if after_go else (None, ["error"]))
