"""``nvc doctor``: each classic GPU-container mistake, reproduced as a fixture host, yields exactly its findings.

The hosts live in ``tests/data/doctor`` (see its README): ``_host`` is a healthy machine, each case overlays it.
Stub binaries there are real executables, so doctor's own command runner is exercised, not a fake.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections import Counter
from pathlib import Path

import pytest

from nvc.commands.doctor import (
    DeviceNodeEntry,
    DoctorPaths,
    Finding,
    diagnose,
    findings_to_json,
    format_findings,
    has_errors,
    scan_device_nodes,
)

DATA = Path(__file__).parent / "data" / "doctor"


def _read_dev_nodes(path: Path) -> list[DeviceNodeEntry]:
    nodes = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or line.startswith("#"):
            continue
        if parts[1] == "c":
            nodes.append(DeviceNodeEntry(parts[0], True, int(parts[2]), int(parts[3])))
        else:
            nodes.append(DeviceNodeEntry(parts[0], False))
    return nodes


def make_host(tmp_path: Path, case: str) -> DoctorPaths:
    """``_host`` + the case's overlay, minus its ``_remove.txt`` paths, as DoctorPaths rooted there."""
    root = tmp_path / "root"
    shutil.copytree(DATA / "_host", root, symlinks=True)
    shutil.copytree(DATA / case, root, symlinks=True, dirs_exist_ok=True)
    remove = root / "_remove.txt"
    if remove.exists():
        for rel in remove.read_text().split():
            target = root / rel
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    nodes = _read_dev_nodes(root / "_dev-nodes.txt")
    # The driver chain (nvc.commands.doctor_driver) has its own tests on real driver roots: tests/test_doctor_driver.py.
    return DoctorPaths(root=str(root), list_device_nodes=lambda _dev_dir: nodes, driver_checks=False)


def problems(findings: list[Finding]) -> Counter:
    return Counter((f.severity, f.check) for f in findings if f.severity != "ok")


GOOD_CASES = ["good-containerd-runsc", "good-containerd-runc", "good-docker-runsc", "driver-from-runsc-list"]

MISTAKES: dict[str, list[tuple[str, str]]] = {
    "runc-shim-runsc": [("error", "containerd.runc-shim-runsc")],
    "runc-shim-nvidia-runsc": [("error", "containerd.runc-shim-runsc")],
    "runsc-no-nvproxy": [("error", "runsc.no-nvproxy")],
    "runsc-no-hook": [("warning", "containerd.runsc-no-hook")],
    "runsc-bool-values": [("error", "containerd.runsc-config-types")],
    "runsc-config-missing": [("error", "containerd.runsc-config-missing")],
    "cli-missing": [("error", "cli.missing")],
    "hook-name-shim": [("error", "runsc.hook-name")],
    "hooks-d-name": [("warning", "runsc.hook-name")],
    "driver-unsupported": [("error", "driver.gvisor-unsupported")],
    "driver-unsupported-table": [("error", "driver.gvisor-unsupported")],
    "driver-unknown": [("warning", "driver.gvisor-unknown")],
    "runsc-too-old": [("error", "runsc.too-old")],
    "stale-devices": [("error", "devices.stale-major"), ("warning", "devices.orphaned")],
    "devices-not-char": [("error", "devices.not-char")],
    "docker-missing-binary": [("error", "docker.binary-missing"), ("error", "docker.binary-missing")],
    "docker-runsc-no-nvproxy": [("error", "runsc.no-nvproxy")],
    "docker-hook-missing": [("error", "docker.hook-missing")],
    "containerd-no-version": [("error", "containerd.config-version-missing")],
    "nothing-configured": [("warning", "setup.none")],
}


def test_every_fixture_case_is_covered():
    cases = {p.name for p in DATA.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert cases == set(GOOD_CASES) | set(MISTAKES)


@pytest.mark.parametrize("case", GOOD_CASES)
def test_correct_setup_has_no_errors_or_warnings(tmp_path, case):
    findings = diagnose(make_host(tmp_path, case))
    assert problems(findings) == Counter(), format_findings(findings)
    assert any(f.severity == "ok" for f in findings)
    assert not has_errors(findings)


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_classic_mistake_yields_exactly_its_findings(tmp_path, case):
    findings = diagnose(make_host(tmp_path, case))
    assert problems(findings) == Counter(MISTAKES[case]), format_findings(findings)
    for finding in findings:
        if finding.severity != "ok":
            assert finding.what and finding.why and finding.fix, finding


def _one(tmp_path, case, check) -> Finding:
    (finding,) = [f for f in diagnose(make_host(tmp_path, case)) if f.check == check and f.severity != "ok"]
    return finding


def test_runc_shim_with_runsc_says_the_start_hangs_and_how_to_fix(tmp_path):
    finding = _one(tmp_path, "runc-shim-runsc", "containerd.runc-shim-runsc")
    assert "io.containerd.runc.v2" in finding.what and "/usr/bin/runsc" in finding.what
    assert "hangs" in finding.why
    assert "io.containerd.runsc.v1" in finding.fix and "nvc setup containerd --runtime runsc" in finding.fix


def test_nvidia_shim_pointing_at_runsc_names_the_shim_config(tmp_path):
    finding = _one(tmp_path, "runc-shim-nvidia-runsc", "containerd.runc-shim-runsc")
    assert "/etc/nvidia-container-runtime/config.toml" in finding.what and "'runsc'" in finding.what


def test_unsupported_driver_shows_the_symptom_users_see(tmp_path):
    finding = _one(tmp_path, "driver-unsupported", "driver.gvisor-unsupported")
    assert "550.54.14" in finding.what and "list-supported-drivers" in finding.what
    assert "waiting for sandbox to start: EOF" in finding.why
    assert "unsupported Nvidia driver version: 550.54.14" in finding.why


def test_driver_table_is_the_fallback_when_runsc_cannot_list(tmp_path):
    finding = _one(tmp_path, "driver-unsupported-table", "driver.gvisor-unsupported")
    assert "nvc's copy" in finding.what


def test_runsc_list_is_the_authority_over_our_table(tmp_path):
    from nvc.host.gvisor_drivers import SUPPORTED_DRIVER_VERSIONS

    assert "560.35.03" not in SUPPORTED_DRIVER_VERSIONS
    findings = diagnose(make_host(tmp_path, "driver-from-runsc-list"))
    assert any(f.check == "driver.gvisor" and "560.35.03" in f.what for f in findings)


def test_allow_unsupported_driver_downgrades_to_warning(tmp_path):
    paths = make_host(tmp_path, "driver-unsupported")
    toml = Path(paths.host("/etc/containerd/runsc-gpu.toml"))
    toml.write_text(toml.read_text() + '  nvproxy-allow-unsupported-driver = "true"\n')
    assert problems(diagnose(paths)) == Counter([("warning", "driver.gvisor-unsupported")])


def test_forced_driver_version_is_checked_instead_of_the_host_one(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runsc")
    toml = Path(paths.host("/etc/containerd/runsc-gpu.toml"))
    toml.write_text(toml.read_text() + '  nvproxy-driver-version = "550.54.14"\n')
    (finding,) = [f for f in diagnose(paths) if f.check == "driver.gvisor-unsupported"]
    assert "forced by nvproxy-driver-version" in finding.what


def test_no_nvproxy_is_only_a_warning_where_runsc_turns_it_on_itself(tmp_path):
    paths = make_host(tmp_path, "runsc-no-nvproxy")
    runsc = Path(paths.host("/usr/bin/runsc"))
    runsc.write_text(runsc.read_text().replace("release-20250106.0", "release-20260601.0"))
    assert problems(diagnose(paths)) == Counter([("warning", "runsc.no-nvproxy")])


def test_cli_missing_names_the_runsc_error(tmp_path):
    finding = _one(tmp_path, "cli-missing", "cli.missing")
    assert "failed to locate nvidia-container-cli in PATH" in finding.why


def test_cli_found_through_a_custom_service_path(tmp_path):
    paths = make_host(tmp_path, "cli-missing")
    paths.runtime_path = "/opt/nvc/bin:/usr/bin"
    assert problems(diagnose(paths)) == Counter()


def test_broken_cli_is_an_error(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runsc")
    Path(paths.host("/usr/bin/nvidia-container-cli")).write_text("#!/opt/gone/.venv/bin/python\n")
    assert problems(diagnose(paths)) == Counter([("error", "cli.broken")])


def test_stale_device_findings_name_the_nodes(tmp_path):
    findings = diagnose(make_host(tmp_path, "stale-devices"))
    (stale,) = [f for f in findings if f.check == "devices.stale-major"]
    assert "/dev/nvidia-uvm (510:0, driver has 508)" in stale.what and "/dev/nvidia-uvm-tools" in stale.what
    (orphaned,) = [f for f in findings if f.check == "devices.orphaned"]
    assert "'nvidia-caps'" in orphaned.what and "rm -r /dev/nvidia-caps" in orphaned.fix


@pytest.mark.root
def test_scan_device_nodes_reads_real_nodes(tmp_path):
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    os.mknod(dev / "nvidiactl", 0o666 | stat.S_IFCHR, os.makedev(195, 255))
    os.mknod(dev / "nvidia-caps" / "nvidia-cap1", 0o400 | stat.S_IFCHR, os.makedev(507, 1))
    (dev / "nvidia0").write_text("")
    (dev / "null").write_text("")
    assert scan_device_nodes(str(dev)) == [
        DeviceNodeEntry("nvidia-caps/nvidia-cap1", True, 507, 1),
        DeviceNodeEntry("nvidia0", False),
        DeviceNodeEntry("nvidiactl", True, 195, 255),
    ]


def test_scan_device_nodes_of_missing_dir_is_empty(tmp_path):
    assert scan_device_nodes(str(tmp_path / "nope")) == []


def test_syntax_errors_are_reported_not_raised(tmp_path):
    paths = make_host(tmp_path, "nothing-configured")
    Path(paths.host("/etc/containerd")).mkdir(parents=True)
    Path(paths.host("/etc/containerd/config.toml")).write_text("version = 2\n[plugins\n")
    Path(paths.host("/etc/docker")).mkdir(parents=True)
    Path(paths.host("/etc/docker/daemon.json")).write_text('{"runtimes": {,}}')
    assert problems(diagnose(paths)) == Counter(
        [("error", "containerd.config-syntax"), ("error", "docker.config-syntax")]
    )


def test_version_3_config_with_version_2_tables(tmp_path):
    paths = make_host(tmp_path, "containerd-no-version")
    config = Path(paths.host("/etc/containerd/config.toml"))
    config.write_text("version = 3\n" + config.read_text())
    assert problems(diagnose(paths)) == Counter([("error", "containerd.config-version-mismatch")])


def test_typeurl_missing_with_configpath(tmp_path):
    paths = make_host(tmp_path, "good-containerd-runsc")
    config = Path(paths.host("/etc/containerd/config.toml"))
    config.write_text(config.read_text().replace('  TypeUrl = "io.containerd.runsc.v1.options"\n', ""))
    assert problems(diagnose(paths)) == Counter([("error", "containerd.runsc-typeurl")])


def test_output_formats(tmp_path):
    findings = diagnose(make_host(tmp_path, "stale-devices"))
    text = format_findings(findings)
    assert text.index("ERROR") < text.index("WARNING") < text.index("\nok")
    assert text.rstrip().endswith("1 error(s), 1 warning(s), 2 ok")  # the driver version: test_doctor_driver.py
    data = json.loads(json.dumps(findings_to_json(findings)))
    assert data["errors"] == 1 and data["warnings"] == 1
    assert set(data["findings"][0]) == {"severity", "what", "why", "fix", "check"}


def test_setup_output_passes_doctor(tmp_path):
    """What `nvc setup` writes is, by doctor's own standard, a correct setup."""
    from nvc.commands.setup_config import apply_containerd, apply_docker

    paths = make_host(tmp_path, "nothing-configured")
    changes = apply_containerd(runtime="runsc", runsc_path="/usr/bin/runsc", root=paths.root)
    assert [c.written for c in changes] == [True, True]
    apply_docker(runtime="runsc", runtime_name="runsc-gpu", runsc_path="/usr/bin/runsc", root=paths.root)
    findings = diagnose(paths)
    assert problems(findings) == Counter(), format_findings(findings)
    assert {f.check for f in findings} >= {"containerd.runtime", "docker.runtime", "driver.gvisor", "cli.version"}
