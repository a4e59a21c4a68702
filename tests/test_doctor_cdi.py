"""``nvc doctor``'s CDI checks on fixture hosts: missing spec, files gone, driver upgraded, conflicts, symlinks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nvc.commands.doctor import diagnose, format_findings, has_errors
from nvc.commands.setup_cdi import edit_containerd_cdi
from tests.test_doctor import make_host

DRIVER = "535.183.06"  # what tests/data/doctor/_host/proc/driver/nvidia/version says is loaded


def cdi_findings(paths):
    return [f for f in diagnose(paths) if f.check.startswith("cdi.")]


def checks(findings):
    return sorted((f.severity, f.check) for f in findings)


def enable_containerd_cdi(root: Path) -> None:
    config = root / "etc/containerd/config.toml"
    config.write_text(edit_containerd_cdi(config.read_text(), (1, 7)))


def write_spec(root: Path, rel: str, driver: str = DRIVER, names=("0", "all"), files=True) -> Path:
    lib = f"/usr/lib/x86_64-linux-gnu/libcuda.so.{driver}"
    if files:
        for path in (lib, "/dev/nvidia0", "/dev/nvidiactl"):
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).touch()
    spec = {"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu",
            "annotations": {"nvc/driver-version": driver, "nvc/driver-root": "/"},
            "devices": [{"name": n, "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}} for n in names],
            "containerEdits": {"deviceNodes": [{"path": "/dev/nvidiactl"}],
                               "mounts": [{"hostPath": lib, "containerPath": lib, "options": ["ro", "bind"]}]}}
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def test_no_cdi_no_findings(tmp_path):
    assert cdi_findings(make_host(tmp_path, "good-containerd-runc")) == []


def test_cdi_enabled_without_a_spec(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runc")
    enable_containerd_cdi(Path(paths.root))
    findings = cdi_findings(paths)
    assert checks(findings) == [("error", "cdi.no-spec"), ("ok", "cdi.enabled")]
    error = next(f for f in findings if f.severity == "error")
    assert error.what == ("CDI is enabled (containerd (/etc/containerd/config.toml)) but no nvidia.com/gpu spec is in "
                          "/etc/cdi, /var/run/cdi")
    assert "`nvc cdi generate --output /var/run/cdi/nvidia.yaml`" in error.fix
    assert has_errors(diagnose(paths))


def test_good_spec(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runc")
    enable_containerd_cdi(Path(paths.root))
    write_spec(Path(paths.root), "/var/run/cdi/nvidia.json")
    findings = cdi_findings(paths)
    assert checks(findings) == [("ok", "cdi.enabled"), ("ok", "cdi.spec")]
    assert findings[1].what == f"CDI spec /var/run/cdi/nvidia.json: 2 nvidia.com/gpu device(s) (driver {DRIVER})"
    assert not has_errors(diagnose(paths))
    # with CDI on, "no GPU runtime is configured" is not said even without a runtime table
    assert "setup.none" not in {f.check for f in diagnose(paths)}


def test_driver_upgrade_makes_the_spec_stale(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runc")
    root = Path(paths.root)
    write_spec(root, "/var/run/cdi/nvidia.json", driver="535.104.05", files=False)
    (root / "dev").mkdir(exist_ok=True)
    for node in ("nvidia0", "nvidiactl"):
        (root / "dev" / node).touch()
    findings = cdi_findings(paths)
    assert checks(findings) == [("error", "cdi.driver-version"), ("error", "cdi.missing-files")]
    stale, missing = findings
    assert stale.what == ("CDI spec /var/run/cdi/nvidia.json was generated for driver 535.104.05, but driver "
                          f"{DRIVER} is loaded")
    assert ("every container given one of its devices (nvidia.com/gpu=...) fails to start with a missing file"
            in stale.why)
    assert stale.fix.startswith("`nvc cdi generate --output /var/run/cdi/nvidia.json`; to keep it true, install "
                                "hooks/nvc-cdi-refresh.service")
    assert missing.what == ("CDI spec /var/run/cdi/nvidia.json names 1 host file(s) that no longer exist: "
                            "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05")
    text = format_findings(findings)
    assert "why: after a driver upgrade" in text and "fix: `nvc cdi generate --output" in text


@pytest.mark.parametrize("hook_args", [
    ["nvidia-cdi-hook", "configure-container", "--host-driver-version", "535.104.05", "--folder", "/usr/lib64"],
    ["nvidia-cdi-hook", "enable-cuda-compat", "--host-driver-version=535.104.05"],  # nvidia-ctk's spelling
], ids=["nvc", "nvidia-ctk"])
def test_stale_spec_without_annotations_is_found_by_its_hook(tmp_path, hook_args):
    """A 0.5.0 spec (the default, no annotations) still states its driver: in its hook's --host-driver-version."""
    paths = make_host(tmp_path, "good-containerd-runc")
    path = write_spec(Path(paths.root), "/var/run/cdi/nvidia.json", driver="535.104.05")
    spec = json.loads(path.read_text())
    spec["cdiVersion"] = "0.5.0"
    del spec["annotations"]
    spec["containerEdits"]["hooks"] = [{"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
                                        "args": hook_args}]
    path.write_text(json.dumps(spec))
    findings = cdi_findings(paths)
    assert checks(findings) == [("error", "cdi.driver-version")]
    assert findings[0].what == ("CDI spec /var/run/cdi/nvidia.json was generated for driver 535.104.05, but driver "
                                f"{DRIVER} is loaded")
    spec["containerEdits"]["hooks"][0]["args"] = [a.replace("535.104.05", DRIVER) for a in hook_args]
    path.write_text(json.dumps(spec))
    assert checks(cdi_findings(paths)) == [("ok", "cdi.spec")]


def test_conflicts(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runc")
    root = Path(paths.root)
    write_spec(root, "/etc/cdi/a.json")
    write_spec(root, "/etc/cdi/b.json", names=("1", "all"))
    write_spec(root, "/var/run/cdi/nvidia.json", names=("0",))
    findings = cdi_findings(paths)
    assert checks(findings) == [("error", "cdi.duplicate"), ("ok", "cdi.spec"), ("ok", "cdi.spec"), ("ok", "cdi.spec"),
                                ("warning", "cdi.shadowed")]
    by_check = {f.check: f for f in findings}
    assert by_check["cdi.duplicate"].what == "nvidia.com/gpu=all is defined by both /etc/cdi/a.json and /etc/cdi/b.json"
    assert by_check["cdi.shadowed"].what == "nvidia.com/gpu=0 in /var/run/cdi/nvidia.json overrides the one in " \
                                            "/etc/cdi/a.json"


def test_symlinked_spec_dir_and_other_consumers(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runc")
    root = Path(paths.root)
    write_spec(root, "/tmp/elsewhere/nvidia.json")
    os.symlink("/tmp/elsewhere", root / "etc/cdi")
    (root / "etc/docker").mkdir(parents=True)
    (root / "etc/docker/daemon.json").write_text('{"features": {"cdi": true}}')
    (root / "etc/nvidia-container-runtime").mkdir(parents=True)
    (root / "etc/nvidia-container-runtime/config.toml").write_text('[nvidia-container-runtime]\nmode = "cdi"\n')
    findings = cdi_findings(paths)
    assert checks(findings) == [("error", "cdi.no-spec"), ("error", "cdi.unusable"), ("ok", "cdi.enabled"),
                                ("ok", "cdi.enabled")]
    unusable = next(f for f in findings if f.check == "cdi.unusable")
    assert unusable.what.startswith("CDI spec location /etc/cdi is unusable: the spec directory is a symlink")
    assert unusable.why.startswith("runtimes leave it out")
    assert [f.what for f in findings if f.check == "cdi.enabled"] == [
        "CDI is enabled for docker (/etc/docker/daemon.json)",
        'CDI is enabled for nvidia-container-runtime (/etc/nvidia-container-runtime/config.toml, mode = "cdi")']


def test_symlinked_spec_file_is_unsafe_not_ignored(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runc")
    root = Path(paths.root)
    target = write_spec(root, "/home/user/nvidia.json")
    (root / "etc/cdi").mkdir(parents=True)
    os.symlink(target, root / "etc/cdi/nvidia.json")
    [finding] = cdi_findings(paths)
    assert finding.check == "cdi.unusable" and finding.what.startswith(
        "CDI spec location /etc/cdi/nvidia.json is unusable: a symlink; spec files are never followed")
    assert finding.why.startswith("nvc's CDI mode refuses it, but podman, containerd, CRI-O and docker still read it")
