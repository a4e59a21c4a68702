"""``nvc doctor``'s gVisor checks that ask the installed runsc itself: its driver table, its flags, its platform.

Why ask the binary: every runsc release carries its own exact table of NVIDIA driver ABIs, its own set of flags
and its own default platform, and a mismatch with any of them fails every GPU sandbox far from the cause
(``waiting for sandbox to start: EOF``, ``flag provided but not defined``). So:

* :func:`supported_drivers` runs ``runsc nvproxy list-supported-drivers``; when that cannot answer (a release
  without the command, a broken binary) the caller falls back to nvc's copy of the table
  (:mod:`nvc.host.gvisor_drivers`) and says why in the finding.
* :func:`check_runsc_flags` compares the flags a GPU runtime passes (``[runsc_config]`` keys, docker's
  ``runtimeArgs``) with what ``runsc flags`` lists: gVisor's shim turns every ``[runsc_config]`` key into a flag.
* :func:`check_platforms`: which platform the runtime uses (its ``platform`` flag, else the binary's default read
  from ``runsc flags``). Whether a platform works depends on the kernel and the machine in ways no version table
  captures (ptrace was seen to panic with ``ptrace set regs failed`` on some hosts and works on others with the
  same kernel line; KVM hangs where nested virtualisation is half there), so the only reliable test is to start a
  sandbox: ``nvc doctor --probe`` runs ``runsc --platform=P do /bin/true`` (root, a private state dir, a time
  limit, everything it made removed). Without ``--probe`` doctor only reads, and warns about ptrace from the
  facts: gVisor's legacy platform, several times slower than systrap, and the one known to panic.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nvc.commands.doctor_inputs import DoctorPaths, Finding, _Context

PROBE_TIMEOUT = 10.0
_FLAG_LINE = re.compile(r"^\s+-([A-Za-z0-9_.-]+)")
_DEFAULT_PLATFORM = re.compile(r"^\s+-platform\b.*\n.*\(default \"([a-z0-9]+)\"\)", re.M)
_LOG_PREFIX = re.compile(r"^[DIWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")


def supported_drivers(paths: DoctorPaths, runsc: str | None) -> tuple[frozenset[str] | None, str]:
    """``runsc nvproxy list-supported-drivers`` as a set, or ``None`` and why it could not be read."""
    from nvc.host.gvisor_drivers import parse_supported_drivers

    if not runsc:
        return None, "no runsc binary found"
    result = paths.run_binary(runsc, "nvproxy", "list-supported-drivers")
    if result is None:
        return None, f"{runsc} could not be executed"
    if result.returncode != 0:
        text = result.stderr + result.stdout
        if "Usage:" in text or "nvproxy" not in text:
            return None, (f"{runsc} has no `nvproxy list-supported-drivers` (exit {result.returncode}: a release "
                          "older than the command)")
        return None, f"`{runsc} nvproxy list-supported-drivers` failed (exit {result.returncode})"
    listed = parse_supported_drivers(result.stdout)
    if not listed:
        return None, f"`{runsc} nvproxy list-supported-drivers` printed no versions"
    return listed, ""


def driver_fix(version: str, runsc: str | None, listed: frozenset[str] | None) -> str:
    """The fix for an unsupported driver: a supported driver first; forcing the ABI only at the user's risk."""
    from nvc.host.gvisor_drivers import SUPPORTED_DRIVER_VERSIONS

    table = listed or SUPPORTED_DRIVER_VERSIONS
    source = "this runsc's list" if listed else "nvc's copy of gVisor's table"
    branch = version.split(".")[0]
    same_branch = sorted((v for v in table if v.split(".")[0] == branch), key=_version_key)
    hint = f" (on the {branch} branch, {source}: {', '.join(same_branch)})" if same_branch else ""
    fix = (f"install a driver version this runsc supports{hint}, or a runsc release that supports {version} "
           f"(`{runsc or 'runsc'} nvproxy list-supported-drivers` prints its list)")
    if same_branch:
        nearest = same_branch[-1]
        fix += (f"; only if you accept the risk of GPU work on an ABI nvproxy was not built for (wrong results or "
                f'a crashed sandbox), force one: nvproxy-driver-version = "{nearest}" in [runsc_config] '
                f"(docker: --nvproxy-driver-version={nearest})")
    return fix


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def _flags_help(ctx: _Context, runsc: str) -> str | None:
    cache = ctx.__dict__.setdefault("_runsc_flags_help", {})
    if runsc not in cache:
        result = ctx.paths.run_binary(runsc, "flags")
        text = (result.stdout + result.stderr) if result is not None and result.returncode == 0 else ""
        cache[runsc] = text if _FLAG_LINE.search(text) else None
    return cache[runsc]


def known_flags(help_text: str) -> frozenset[str]:
    """Flag names from ``runsc flags`` (Go's flag package: ``  -name type`` then an indented description)."""
    return frozenset(m.group(1) for m in map(_FLAG_LINE.match, help_text.splitlines()) if m)


def default_platform(help_text: str) -> str | None:
    match = _DEFAULT_PLATFORM.search(help_text)
    return match.group(1) if match else None


def check_runsc_flags(ctx: _Context) -> list[Finding]:
    """Every flag a GPU runtime hands runsc must be one this runsc knows, or no sandbox starts."""
    from nvc.commands.doctor_inputs import Finding

    findings = []
    for runtime in ctx.gpu_runtimes:
        if runtime.kind != "runsc" or not runtime.runsc or not runtime.flags:
            continue
        help_text = _flags_help(ctx, runtime.runsc)
        if help_text is None:
            continue
        unknown = sorted(set(runtime.flags) - known_flags(help_text))
        if unknown:
            findings.append(Finding(
                "error",
                f"{runtime.where} passes runsc flags that {runtime.runsc} does not know: {', '.join(unknown)}",
                f"every container on this runtime fails to start: `flag provided but not defined: -{unknown[0]}`",
                f"remove them or install a runsc release that has them: {runtime.fix}",
                "runsc.unknown-flag",
            ))
    return findings


def check_platforms(ctx: _Context) -> list[Finding]:
    """The platform each GPU runsc runtime uses: probed with a real sandbox under ``--probe``, else judged."""
    from nvc.commands.doctor_inputs import Finding

    findings = []
    seen: set[tuple[str, str]] = set()
    for runtime in ctx.gpu_runtimes:
        if runtime.kind != "runsc" or not runtime.runsc:
            continue
        help_text = _flags_help(ctx, runtime.runsc)
        platform = runtime.flags.get("platform") or (default_platform(help_text) if help_text else None)
        if not platform or (runtime.runsc, platform) in seen:
            continue
        seen.add((runtime.runsc, platform))
        has_systrap = bool(help_text and "systrap" in help_text)
        fix = (f'set platform = "systrap" in [runsc_config] (docker: --platform=systrap in runtimeArgs): '
               f"{runtime.fix}" if has_systrap else "install a current runsc, whose default platform is systrap")
        if ctx.paths.probe:
            works, detail = (ctx.paths.probe_platform or probe_platform)(ctx.paths.host(runtime.runsc), platform)
            if works:
                findings.append(Finding("ok", f"{runtime.where}: runsc platform {platform} starts a sandbox "
                                              f"(probe: {detail})", check="runsc.platform"))
                continue
            if has_systrap and platform != "systrap":
                systrap_works, systrap_detail = (ctx.paths.probe_platform or probe_platform)(
                    ctx.paths.host(runtime.runsc), "systrap")
                fix += (" — the probe started a systrap sandbox fine" if systrap_works
                        else f" — but systrap failed too here ({systrap_detail})")
            findings.append(Finding(
                "error",
                f"{runtime.where}: runsc's platform {platform} cannot start a sandbox on this host ({detail})",
                "every container on this runtime fails to start; users see `waiting for sandbox to start: EOF` "
                "(ptrace: the sandbox panics, e.g. `ptrace set regs failed`; kvm: the start hangs)",
                fix,
                "runsc.platform-broken",
            ))
        elif platform == "ptrace":
            findings.append(Finding(
                "warning",
                f"{runtime.where}: runsc uses the ptrace platform",
                "ptrace is gVisor's legacy platform: several times slower than systrap, and on some kernels the "
                "sandbox panics (`ptrace set regs failed`), which users see as `waiting for sandbox to start: EOF`",
                fix + " (`nvc doctor --probe` starts a test sandbox on each platform)",
                "runsc.platform-ptrace",
            ))
    return findings


def probe_platform(runsc: str, platform: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Start ``runsc --platform=PLATFORM do /bin/true`` in a private state dir; ``(works, detail)``.

    The probe runs in its own session, without cgroups, and is killed at ``timeout`` (a platform may hang rather
    than fail); whatever sandbox it left is deleted through its state dir, so a probe leaves nothing behind."""
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    state = tempfile.mkdtemp(prefix="nvc-doctor-runsc-")
    # TMPDIR: `do` keeps a scratch dir there, which a killed probe would leave behind.
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "TMPDIR": state}
    # --ignore-cgroups: a failed start would leave empty cgroups named after an id `do` picks and never says.
    argv = [runsc, f"--root={state}", "--network=none", "--ignore-cgroups", f"--platform={platform}", "do",
            "/bin/true"]
    started = time.monotonic()
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env, cwd=state, start_new_session=True)
        except OSError as exc:
            return False, f"cannot run {runsc}: {exc.strerror}"
        try:
            _out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, f"no sandbox within {timeout:g} s: it hangs"
        if proc.returncode == 0:
            return True, f"/bin/true ran in {time.monotonic() - started:.1f} s"
        return False, _last_error(err) or f"exit {proc.returncode}"
    finally:
        _remove_probe_sandboxes(runsc, state, env)
        shutil.rmtree(state, ignore_errors=True)


def _last_error(stderr: str) -> str:
    lines = [_LOG_PREFIX.sub("", line).strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if "FATAL ERROR" in line or "panic" in line]
    return (fatal or lines or [""])[-1].replace("FATAL ERROR: ", "")


def _remove_probe_sandboxes(runsc: str, state: str, env: dict[str, str]) -> None:
    import subprocess

    def run(args: Sequence[str]) -> str:
        try:
            return subprocess.run([runsc, f"--root={state}", *args], capture_output=True, text=True, env=env,
                                  timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    for container in run(["list", "-q"]).split():
        run(["delete", "-force", container])
