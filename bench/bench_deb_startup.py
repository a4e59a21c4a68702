#!/usr/bin/env python3
"""Start-up of the installed Debian package against the development venv (a report, not a test). Needs root.

The hook and ``nvidia-container-cli`` start on every container start, so the package must not make them slower
than the development set-up the rest of the benchmarks measure. In N interleaved pairs (the order inside each pair
alternates), this times:
  - ``nvidia-container-runtime-hook prestart`` for a container that asks for no GPU (the hook's start-up: the
    interpreter, the launcher, ``nvc.commands.hook``, config.toml, the bundle's config.json; it then exits 0), and
  - ``nvidia-container-cli --version`` (interpreter, launcher, ``nvc.commands.cli_main``),
once as installed by the package in a Debian root (``chroot ROOT /usr/bin/...``: the venv in /usr/lib/nvc on the
root's python3.11, byte-compiled by postinst) and once from the development venv (``chroot / DEV_BIN/...``: the
same ``chroot`` exec, the host's python3.11 and the venv that ``scripts/setup.sh`` made, an editable install).
Both read the same config.toml (the package's) and the same bundle. It prints, per command and layout, the
median wall and CPU (user+sys) time and the median of the paired differences (installed - dev) with its
10th-90th percentile range; ``--json`` prints one JSON object instead.

Without ``--root`` it builds the package (scripts/build-deb.sh), installs it with apt into a copy of the cached
debootstrap root (fixtures.deb_root) and deletes that copy at the end; ``--root DIR`` uses a root where the
package is already installed.

``--wheel-venv`` adds a third layout: a venv on the host's python3.11 with nvc pip-installed from its wheel (not
editable, so its launchers also start without site), i.e. the package's layout made by pip, paired the same way.

Usage: python bench/bench_deb_startup.py [--root DIR] [-n ROUNDS] [--dev-bin DIR] [--wheel-venv] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = "/etc/nvidia-container-runtime/config.toml"
BUNDLE = "/tmp/nvc-bench-startup"  # inside the installed root


def _timed(argv: list[str], env: dict[str, str], stdin_path: str | None) -> tuple[float, float, int, str]:
    """(wall ms, CPU ms of the child, exit status, stderr) of one run."""
    import time

    with open(stdin_path or os.devnull, "rb") as stdin, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = (time.perf_counter() - start) * 1000
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return wall, (usage.ru_utime + usage.ru_stime) * 1000, proc.returncode, err.read().decode(errors="replace")


def _prepare_bundle(root: Path) -> None:
    """A bundle whose container asks for no GPU, inside the root (the dev run reads it through ROOT/...)."""
    bundle = root / BUNDLE.lstrip("/")
    (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"env": ["PATH=/bin", "HOME=/"]}}
    (bundle / "config.json").write_text(json.dumps(spec))


def measure(root: Path, dev_bin: Path, rounds: int, venv_bin: Path | None = None) -> dict:
    _prepare_bundle(root)
    work = Path(tempfile.mkdtemp(prefix="nvc-bench-deb-"))
    try:
        states = {}
        for layout, bundle in (("installed", BUNDLE), ("dev", str(root) + BUNDLE), ("venv", str(root) + BUNDLE)):
            states[layout] = work / f"state-{layout}.json"
            states[layout].write_text(json.dumps({"ociVersion": "1.0.2", "id": "bench", "pid": os.getpid(),
                                                  "bundle": bundle}))  # fmt: skip
        (work / "cache").mkdir(mode=0o700)
        (root / "tmp/nvc-bench-cache").mkdir(mode=0o700, exist_ok=True)
        base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        layouts = {
            "installed": (["chroot", str(root)], "/usr/bin", {**base_env, "NVIDIA_CTK_CONFIG_FILE_PATH": CONFIG,
                                                              "NVC_CACHE_DIR": "/tmp/nvc-bench-cache"}),
            "dev": (["chroot", "/"], str(dev_bin), {**base_env, "NVIDIA_CTK_CONFIG_FILE_PATH": str(root) + CONFIG,
                                                    "NVC_CACHE_DIR": str(work / "cache")}),
        }  # fmt: skip
        if venv_bin is not None:  # a plain (not editable) pip install: the package's layout without the package
            (work / "venv-cache").mkdir(mode=0o700)
            layouts["venv"] = (["chroot", "/"], str(venv_bin), {**layouts["dev"][2],
                                                                "NVC_CACHE_DIR": str(work / "venv-cache")})  # fmt: skip
        commands = {
            "hook prestart (no GPU asked)": ("nvidia-container-runtime-hook", ["prestart"], True),
            "nvidia-container-cli --version": ("nvidia-container-cli", ["--version"], False),
        }
        result: dict = {"rounds": rounds, "root": str(root), "dev_bin": str(dev_bin), "commands": {}, "launcher": {}}
        for layout, (prefix, bindir, env) in layouts.items():  # check both work, and how the launcher started
            wall, cpu, rc, err = _timed([*prefix, f"{bindir}/nvidia-container-cli", "--version"],
                                        {**env, "NVC_LAUNCHER_TRACE": "1"}, None)  # fmt: skip
            if rc != 0:
                raise SystemExit(f"{layout}: nvidia-container-cli --version failed: {err.strip()}")
            result["launcher"][layout] = err.strip()
        for title, (tool, args, with_state) in commands.items():
            samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in layouts}
            diffs: dict[str, list[float]] = {k: [] for k in layouts if k != "installed"}
            for i in range(rounds + 2):  # two warm-up pairs fill the page cache and the config cache
                order = list(layouts) if i % 2 == 0 else list(reversed(layouts))
                pair: dict[str, float] = {}
                for layout in order:
                    prefix, bindir, env = layouts[layout]
                    wall, cpu, rc, err = _timed([*prefix, f"{bindir}/{tool}", *args], env,
                                                str(states[layout]) if with_state else None)  # fmt: skip
                    if rc != 0:
                        raise SystemExit(f"{layout}: {tool} {' '.join(args)} failed: {err.strip()}")
                    if i >= 2:
                        samples[layout]["wall"].append(wall)
                        samples[layout]["cpu"].append(cpu)
                    pair[layout] = wall
                if i >= 2:
                    for other, values in diffs.items():
                        values.append(pair["installed"] - pair[other])
            figures = {f"{layout}_{kind}_ms": round(statistics.median(values), 2)
                       for layout, kinds in samples.items() for kind, values in kinds.items()}  # fmt: skip
            for other, values in diffs.items():
                values.sort()
                name = "paired_diff" if other == "dev" else f"paired_diff_vs_{other}"
                figures[f"{name}_median_ms"] = round(statistics.median(values), 2)
                figures[f"{name}_p10_ms"] = round(values[len(values) // 10], 2)
                figures[f"{name}_p90_ms"] = round(values[(len(values) * 9) // 10 - (1 if len(values) >= 10 else 0)], 2)
            result["commands"][title] = figures
        return result
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _installed_root(tmp: Path):
    from fixtures.deb_root import DebRoot, build_deb

    deb = build_deb(tmp / "debs")
    root = DebRoot.create(tmp / "root", binds=[deb.parent])
    root.run(f"apt-get -q update && apt-get install -q -y {deb}")
    return root


def _wheel_venv(tmp: Path) -> Path:
    """A venv on the host's python3.11 with nvc installed from a wheel (not editable) and the pinned libraries, from
    the package build's wheel cache (no network once scripts/build-deb.sh has run): the package's layout, by pip."""
    from fixtures.deb_root import wheel_cache

    venv = tmp / "wheel-venv"
    subprocess.run(["/usr/bin/python3.11", "-m", "venv", str(venv)], check=True, capture_output=True)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    # The cache holds only pinned versions (debian/requirements.txt): pip resolves nvc's requirements among them.
    proc = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(wheel_cache()),
                           str(REPO)], capture_output=True, text=True, env=env, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"pip install of nvc into {venv} failed:\n{proc.stderr[-2000:]}")
    return venv / "bin"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="a Debian root with the nvc package installed (default: make one)")
    parser.add_argument("-n", "--rounds", type=int, default=30)
    parser.add_argument(
        "--dev-bin",
        type=Path,
        default=Path(sys.executable).parent,
        help="the development venv's bin directory (default: this interpreter's)",
    )
    parser.add_argument(
        "--wheel-venv",
        action="store_true",
        help="also time a venv with nvc pip-installed from its wheel (the package's layout, by pip)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (chroot)")
    if not (args.dev_bin / "nvidia-container-runtime-hook").is_file():
        parser.error(f"{args.dev_bin} has no nvidia-container-runtime-hook: pass the venv's bin with --dev-bin")
    made = None
    tmp = Path(tempfile.mkdtemp(prefix="nvc-bench-deb-root-"))
    try:
        if args.root is None:
            made = _installed_root(tmp)
            root = made.path
        else:
            root = args.root.resolve()
        if not (root / "usr/lib/nvc/bin/nvc").is_file():
            parser.error(f"{root}: the nvc package is not installed there")
        venv_bin = _wheel_venv(tmp) if args.wheel_venv else None
        result = measure(root, args.dev_bin.absolute(), max(args.rounds, 1), venv_bin)
    finally:
        if made is not None:
            made.remove()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['rounds']} interleaved pairs; installed: {root} (chroot), dev: {result['dev_bin']} (chroot /)")
    for layout, trace in result["launcher"].items():
        print(f"  {layout:9} launcher: {trace}")
    for title, fig in result["commands"].items():
        print(f"{title}:")
        for layout in result["launcher"]:
            print(f"  {layout:9} wall {fig[f'{layout}_wall_ms']:7.2f} ms   cpu {fig[f'{layout}_cpu_ms']:7.2f} ms")
        print(
            f"  installed - dev, paired: median {fig['paired_diff_median_ms']:+.2f} ms "
            f"(p10 {fig['paired_diff_p10_ms']:+.2f}, p90 {fig['paired_diff_p90_ms']:+.2f})"
        )
        if "paired_diff_vs_venv_median_ms" in fig:
            print(
                f"  installed - venv, paired: median {fig['paired_diff_vs_venv_median_ms']:+.2f} ms "
                f"(p10 {fig['paired_diff_vs_venv_p10_ms']:+.2f}, p90 {fig['paired_diff_vs_venv_p90_ms']:+.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
