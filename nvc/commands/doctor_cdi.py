"""``nvc doctor``'s CDI checks: a spec that is missing, stale or ambiguous fails GPU containers far from its cause.

With CDI the runtime (containerd, docker, podman, CRI-O, or our shim in CDI mode) applies a spec written once per
host; nothing re-checks it at container start. So:

* **CDI is on but there is no NVIDIA spec** (containerd ``enable_cdi = true`` — containerd 2's default-on alone
  does not count, a host may use the nvidia runtime instead; docker ``features.cdi``; the shim's ``mode = "cdi"``):
  every ``--device nvidia.com/gpu=...`` fails with ``unresolvable CDI devices``.
* **A spec names host files that are gone** (mount ``hostPath``, device node ``hostPath``/``path``): the runtime
  fails the start with ``no such file or directory`` for the first one.
* **The spec's driver version is not the loaded driver's** (its ``nvc/driver-version`` annotation, else the
  ``--host-driver-version`` its hook is given — ours and nvidia-ctk's both carry it): after a driver upgrade the
  spec still names the old version's libraries (``libcuda.so.535.x``), so every CDI container start fails with a
  missing file; the fix is to regenerate it (``nvc cdi generate --output FILE``, or the systemd units that do it at
  boot and on driver changes).
* **Two specs claim one device name**: in one directory that name resolves to neither (error); in two, the later
  directory wins (warning: usually a forgotten copy in ``/etc/cdi`` under a generated ``/var/run/cdi`` one).
* **Unusable spec files or directories** (invalid, a symlink, world-writable): left out by every consumer.

Everything is read under :class:`nvc.commands.doctor.DoctorPaths` ``root`` (a fixture tree reproduces a host); nothing
is run or written.
"""

from __future__ import annotations

import os
import tomllib
from typing import TYPE_CHECKING, Any

from nvc.commands.setup_config import CRI_PLUGIN
from nvc.emit.cdi.registry import DEFAULT_SPEC_DIRS, Registry, load_registry

if TYPE_CHECKING:
    from nvc.commands.doctor_inputs import DoctorPaths, Finding

ANNOTATION_DRIVER_VERSION = "nvc/driver-version"
HOST_DRIVER_VERSION_FLAG = "--host-driver-version"
NVIDIA_KIND = "nvidia.com/gpu"
GENERATE_FIX = ("`nvc cdi generate --output {path}`; to keep it true, install hooks/nvc-cdi-refresh.service and "
                ".path and `systemctl enable --now nvc-cdi-refresh.path nvc-cdi-refresh.service` (they regenerate "
                "/var/run/cdi/nvidia.yaml at boot and when the driver changes)")


def _finding(severity: str, what: str, why: str = "", fix: str = "", check: str = "") -> Finding:
    from nvc.commands.doctor_inputs import Finding

    return Finding(severity, what, why, fix, check)


def cdi_consumers(paths: DoctorPaths, shim_config: dict[str, Any]) -> list[str]:
    """Which configured runtimes read CDI specs: one line each (``containerd (enable_cdi in ...)``)."""
    consumers = []
    text = paths.read(paths.containerd_config)
    if text is not None:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            doc = None
        if doc is not None:
            version = doc.get("version", 1) if doc else 2
            plugin = CRI_PLUGIN.get(version) if isinstance(version, int) else None
            table = doc.get("plugins", {}).get(plugin) if plugin else None
            enabled = table.get("enable_cdi") if isinstance(table, dict) else None
            if enabled is True:  # containerd 2's default-on alone is no sign anyone uses CDI for GPUs here
                consumers.append(f"containerd ({paths.containerd_config})")
    text = paths.read(paths.docker_daemon_config)
    if text is not None:
        import json

        try:
            daemon = json.loads(text)
        except ValueError:
            daemon = None
        features = daemon.get("features") if isinstance(daemon, dict) else None
        if isinstance(features, dict) and features.get("cdi") is True:
            consumers.append(f"docker ({paths.docker_daemon_config})")
    runtime = shim_config.get("nvidia-container-runtime")
    if isinstance(runtime, dict) and runtime.get("mode") == "cdi":
        consumers.append(f"nvidia-container-runtime ({paths.nvidia_runtime_config}, mode = \"cdi\")")
    return consumers


def _spec_dirs(shim_config: dict[str, Any]) -> tuple[str, ...]:
    runtime = shim_config.get("nvidia-container-runtime")
    modes = runtime.get("modes") if isinstance(runtime, dict) else None
    cdi = modes.get("cdi") if isinstance(modes, dict) else None
    dirs = cdi.get("spec-dirs") if isinstance(cdi, dict) else None
    if isinstance(dirs, list) and dirs and all(isinstance(d, str) for d in dirs):
        return tuple(dirs)
    return DEFAULT_SPEC_DIRS


def _shown(paths: DoctorPaths, path: str) -> str:
    """A path found under the doctor's root, as the host names it."""
    root = paths.root.rstrip("/")
    return path[len(root):] if root and path.startswith(root + "/") else path


def _missing_files(paths: DoctorPaths, spec: Any) -> list[str]:
    wanted: list[str] = []
    for edits in (spec.edits, *spec.devices.values()):
        for mount in edits.get("mounts") or ():
            wanted.append(mount["hostPath"])
        for node in edits.get("deviceNodes") or ():
            wanted.append(node.get("hostPath") or node["path"])
    missing = []
    for path in dict.fromkeys(wanted):
        if os.path.isabs(path) and not os.path.lexists(paths.host(path)):
            missing.append(path)
    return missing


def _loaded_driver(paths: DoctorPaths) -> str | None:
    from nvc.host.proc_driver import parse_nvrm_version

    text = paths.read(paths.proc_driver_version)
    return parse_nvrm_version(text) if text else None


def _some(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def stated_driver_version(spec: Any) -> str | None:
    """The driver version a spec was generated for: its ``nvc/driver-version`` annotation (``--annotations``), else
    the ``--host-driver-version`` a hook is given — ours (``--host-driver-version V``) and nvidia-ctk's
    ``enable-cuda-compat`` hook (``--host-driver-version=V``) both carry it, so a 0.5.0 spec is checked too."""
    stated = spec.annotations.get(ANNOTATION_DRIVER_VERSION)
    if stated:
        return stated
    for edits in (spec.edits, *spec.devices.values()):
        for hook in edits.get("hooks") or ():
            args = hook.get("args") or ()
            for i, arg in enumerate(args):
                if arg == HOST_DRIVER_VERSION_FLAG and i + 1 < len(args):
                    return args[i + 1]
                if arg.startswith(HOST_DRIVER_VERSION_FLAG + "="):
                    return arg.partition("=")[2]
    return None


def _spec_findings(paths: DoctorPaths, registry: Registry, driver: str | None) -> list[Finding]:
    findings = []
    for spec in registry.specs:
        shown = _shown(paths, spec.path)
        stated = stated_driver_version(spec)
        stale = bool(stated and driver and stated != driver)
        if stale:
            findings.append(_finding(
                "error", f"CDI spec {shown} was generated for driver {stated}, but driver {driver} is loaded",
                "after a driver upgrade the spec still names the old driver's files, so every container given one of "
                f"its devices ({spec.kind}=...) fails to start with a missing file",
                GENERATE_FIX.format(path=shown), "cdi.driver-version"))
        missing = _missing_files(paths, spec)
        if missing:
            findings.append(_finding(
                "error", f"CDI spec {shown} names {len(missing)} host file(s) that no longer exist: {_some(missing)}",
                "the runtime fails every container start that uses this spec's devices (`no such file or directory` "
                "for the first missing file)" + (" — the driver changed since the spec was written" if stale else ""),
                GENERATE_FIX.format(path=shown), "cdi.missing-files"))
        if not stale and not missing:
            version = f" (driver {stated})" if stated else ""
            findings.append(_finding("ok", f"CDI spec {shown}: {len(spec.devices)} {spec.kind} device(s){version}",
                                     check="cdi.spec"))
    return findings


def check_cdi(paths: DoctorPaths, shim_config: dict[str, Any]) -> list[Finding]:
    """Every CDI finding for the host at ``paths`` (``shim_config``: the parsed config.toml, {} if absent)."""
    consumers = cdi_consumers(paths, shim_config)
    dirs = _spec_dirs(shim_config)
    registry = load_registry([paths.host(d) for d in dirs])
    if not registry.specs and not registry.problems and not consumers:
        return []  # no CDI on this host: nothing to say
    findings: list[Finding] = []
    for consumer in consumers:
        findings.append(_finding("ok", f"CDI is enabled for {consumer}", check="cdi.enabled"))
    for problem in registry.problems:
        why = ("nvc's CDI mode refuses it, but podman, containerd, CRI-O and docker still read it: whoever can change "
               "it decides which host files, devices and hooks GPU containers get" if problem.unsafe else
               "runtimes leave it out, so the devices it defines cannot be given to containers")
        findings.append(_finding(
            "error", f"CDI spec location {_shown(paths, problem.path)} is unusable: {problem.message}", why,
            "fix or remove it; regenerate an NVIDIA spec with " + GENERATE_FIX.format(path="/var/run/cdi/nvidia.yaml"),
            "cdi.unusable"))
    for conflict in registry.conflicts:
        winner, loser = _shown(paths, conflict.winner), _shown(paths, conflict.loser)
        if conflict.duplicate:
            findings.append(_finding(
                "error", f"{conflict.name} is defined by both {loser} and {winner}",
                "two specs in one directory claiming a device name make it resolve to neither: containers asking for "
                "it fail with `unresolvable CDI devices`", "remove one of the two files", "cdi.duplicate"))
        else:
            findings.append(_finding(
                "warning", f"{conflict.name} in {winner} overrides the one in {loser}",
                "the later spec directory wins; the other copy is ignored and may be stale",
                f"remove {loser} if it is a leftover", "cdi.shadowed"))
    findings += _spec_findings(paths, registry, _loaded_driver(paths))
    kinds = {spec.kind for spec in registry.specs}
    if consumers and NVIDIA_KIND not in kinds:
        findings.append(_finding(
            "error", f"CDI is enabled ({'; '.join(consumers)}) but no {NVIDIA_KIND} spec is in {', '.join(dirs)}",
            f"every container asking for `--device {NVIDIA_KIND}=...` fails with `unresolvable CDI devices`",
            GENERATE_FIX.format(path="/var/run/cdi/nvidia.yaml"), "cdi.no-spec"))
    return findings
