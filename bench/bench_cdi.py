#!/usr/bin/env python3
"""Benchmark: a CDI GPU container start (the spec's edits applied by the runtime + our ONE createContainer hook)
against the legacy path (our in-process prestart hook), in the same run. Needs root. A report, not a test.

On the fake GPU host of bench_hook.py (Debian 535 driver files, stub NVML, warm answer caches), with 1 GPU and
with 8 GPUs, medians of N rounds (the variants in a new, seeded order each round) of ``runc run /bin/true`` on a
fresh busybox bundle, in wall time and in CPU time (user + system of runc and everything it ran: on a machine
shared with other work the wall times are bimodal, waits for a CPU included; the CPU times are the steadier
comparison):

  - none:        no hook, no edits (the floor every variant is measured against);
  - legacy:      our in-process prestart hook (``nvidia-container-runtime-hook``: NVML cache, plan, mounts, cache);
  - cdi-edits:   the spec's nodes, mounts and env in config.json, as a CDI runtime writes them, no hook;
  - cdi:         the same plus our one hook (``nvidia-cdi-hook configure-container``): what a CDI start costs;
  - cdi-4hooks:  the same edits with NVIDIA's hook layout (two ``create-symlinks``, ``enable-cuda-compat``,
                 ``update-ldcache``), served by our drop-in subcommands: what four hook processes cost;
  - cdi-true:    the edits + ``/bin/true`` as the one hook: what runc pays for running any hook process;
  - cdi-floor:   the edits + ``python -I -S`` reading the state: what any Python hook pays before it imports.

The issue's target: what our CDI path adds (cdi - none) is at most half of what the legacy hook adds
(legacy - none). ``cdi - cdi-edits`` is the hook alone; ``cdi-edits - none`` is runc making the mounts;
``cdi - cdi-floor`` is what our hook adds over a bare interpreter (imports and work).

With --compare OLD_REPO, the variants that run our code (legacy, cdi, cdi-4hooks) run a second time with the tools
of OLD_REPO (an older checkout: its hook, its generator), alternating with ours within every round, and the
median of the paired differences (ours - old) is printed for each.

Both paths give the container the same thing: the spec is generated with ``--driver-capabilities
compute,utility``, what the legacy variant's container asks for (NVIDIA_DRIVER_CAPABILITIES).

The spec's edits are merged into config.json the way CDI runtimes merge them (mounts appended, device nodes
into linux.devices with an allow rule each, env entries, hooks under createContainer): enough for runc here; the
product's own applier is the runtime shim's CDI mode.

Usage: python bench/bench_cdi.py [-n ROUNDS] [--gpus 1,8] [--warmup N] [--on-disk] [--compare OLD_REPO]
                                 [--seed N] [--settle-ms MS] [--samples FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_hook import gpus, hook_entries  # noqa: E402  (the same hosts and legacy hook entry)

CAPABILITIES = "compute,utility"  # what the legacy variant's container asks for: the same files either way
KINDS = {
    "none": "no hook, no edits",
    "legacy": "legacy: our in-process prestart hook",
    "cdi-edits": "CDI edits applied, no hook",
    "cdi": "CDI edits + our one hook",
    "cdi-4hooks": "CDI edits + 4 hooks (NVIDIA's layout)",
    "cdi-true": "CDI edits + floor: /bin/true as the hook",
    "cdi-floor": "CDI edits + floor: python -I -S reading the state",
}
METRICS = {"wall": "wall time", "cpu": "CPU time (user + system, runc and all it ran)"}
OURS = ("legacy", "cdi", "cdi-4hooks")  # the variants that run our code: run for each checkout with --compare


def generate_spec(env: dict[str, str], root: str, repo: Path = REPO) -> dict:
    """The spec ``repo``'s ``nvc cdi generate`` writes (``-m`` imports from the working directory first), naming the
    hook installed in ``env``'s first PATH entry."""
    bindir = Path(env["PATH"].split(":")[0])
    res = subprocess.run([sys.executable, "-m", "nvc", "cdi", "generate", "--driver-root", root, "--format", "json",
                          "--hook-path", str(bindir / "nvidia-cdi-hook"), "--driver-capabilities", CAPABILITIES],
                         env={**os.environ, **env}, cwd=repo, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"nvc cdi generate failed: {res.stderr}")
    return json.loads(res.stdout)


def nvidia_layout_hooks(hook: dict) -> list[dict]:
    """Our one hook's work split the way nvidia-ctk's spec splits it: four processes."""
    args = hook["args"]
    links = [args[i + 1] for i in range(len(args) - 1) if args[i] == "--link"]
    folders = [args[i + 1] for i in range(len(args) - 1) if args[i] == "--folder"]
    version = args[args.index("--host-driver-version") + 1]
    half = len(links) // 2

    def entry(*rest: str) -> dict:
        return {"path": hook["path"], "args": ["nvidia-cdi-hook", *rest]}

    return [
        entry("create-symlinks", *(a for link in links[:half] for a in ("--link", link))),
        entry("create-symlinks", *(a for link in links[half:] for a in ("--link", link))),
        entry("enable-cuda-compat", "--host-driver-version", version),
        entry("update-ldcache", *(a for folder in folders for a in ("--folder", folder))),
    ]


def apply_cdi(config: dict, spec: dict, device: str, hooks: str) -> None:
    """Merge the common edits and ``device``'s edits into ``config`` (``hooks``: none | one | nvidia)."""
    edits = [spec["containerEdits"], next(d for d in spec["devices"] if d["name"] == device)["containerEdits"]]
    linux = config.setdefault("linux", {})
    resources = linux.setdefault("resources", {})
    for edit in edits:
        for node in edit.get("deviceNodes", ()):
            linux.setdefault("devices", []).append({k: node[k] for k in ("path", "type", "major", "minor", "fileMode")}
                                                   | {"uid": 0, "gid": 0})
            resources.setdefault("devices", []).append({"allow": True, "type": node["type"], "major": node["major"],
                                                        "minor": node["minor"], "access": "rwm"})
        for mount in edit.get("mounts", ()):
            config.setdefault("mounts", []).append({"destination": mount["containerPath"], "type": mount["type"],
                                                    "source": mount["hostPath"], "options": mount["options"]})
        config["process"]["env"] = [e for e in config["process"]["env"] if not e.startswith("NVIDIA_VISIBLE_DEVICES=")]
        config["process"]["env"] += edit.get("env", [])
        if hooks != "none":
            for hook in edit.get("hooks", ()):
                floor = {"path": sys.executable, "args": ["python", "-I", "-S", "-c", "import sys; sys.stdin.read()"]}
                true = {"path": shutil.which("true") or "/bin/true", "args": ["true"]}
                entries = {"one": [hook], "floor": [floor], "true": [true], "nvidia": nvidia_layout_hooks(hook)}[hooks]
                config.setdefault("hooks", {}).setdefault("createContainer", []).extend(
                    {"path": e["path"], "args": e["args"]} for e in entries)


def runc_once(work: Path, env: dict[str, str], base_rootfs: Path, kind: str, spec: dict, device: str,
              settle_s: float = 0.0) -> tuple[float, float]:
    """(wall ms, CPU ms) of one ``runc run``: the CPU time (user + system of runc, its hooks and the container's
    process, all reaped by the time it returns) is what the variant costs without the waits for a CPU that, on a
    shared machine, make wall times bimodal."""
    from fixtures.rootfs import copy_rootfs, safe_rmtree
    from fixtures.runtimes import make_bundle, unique_id

    bundle = work / "runc-bundle"
    legacy_env = [f"NVIDIA_VISIBLE_DEVICES={env['NVC_BENCH_DEVICES']}", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    make_bundle(bundle, copy_rootfs(base_rootfs, bundle / "rootfs"), ["/bin/true"], env=legacy_env,
                hooks=hook_entries(env, "hook") if kind == "legacy" else None)
    if kind.startswith("cdi"):
        config = json.loads((bundle / "config.json").read_text())
        apply_cdi(config, spec, device, {"cdi-edits": "none", "cdi": "one", "cdi-4hooks": "nvidia",
                                        "cdi-true": "true", "cdi-floor": "floor"}[kind])
        (bundle / "config.json").write_text(json.dumps(config))
    state_dir = tempfile.mkdtemp(prefix="nvc-bench-runc-")
    cid = unique_id("bench")
    try:
        time.sleep(settle_s)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        res = subprocess.run(["runc", "--root", state_dir, "run", "--bundle", str(bundle), cid],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False)
        elapsed = (time.perf_counter() - start) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
        if res.returncode != 0:
            raise SystemExit(f"runc ({kind}) failed: {res.stderr}")
        if kind in ("cdi", "cdi-4hooks") and not os.path.islink(bundle / "rootfs/usr/lib64/libcuda.so.1"):
            raise SystemExit(f"runc ({kind}): the hook did not run")
        return elapsed, cpu
    finally:
        subprocess.run(["runc", "--root", state_dir, "delete", "-f", cid], capture_output=True, check=False)
        shutil.rmtree(state_dir, ignore_errors=True)
        safe_rmtree(bundle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=15)
    parser.add_argument("--gpus", default="1,8", help="comma-separated GPU counts to run")
    parser.add_argument("--warmup", type=int, default=3, help="rounds run first and not counted")
    parser.add_argument("--on-disk", action="store_true", help="keep bundles on /tmp's disk instead of a tmpfs")
    parser.add_argument("--compare", type=Path, help="an older checkout whose hooks alternate with ours")
    parser.add_argument("--seed", type=int, default=10, help="seed of the per-round order of the variants")
    parser.add_argument("--settle-ms", type=float, default=0.0,
                        help="pause before each timed run, so the previous container's teardown is not measured")
    parser.add_argument("--samples", type=Path, help="also write every sample (ms, in run order) to this JSON file")
    args = parser.parse_args()
    from fixtures.gpu_host import make_gpu_host
    from fixtures.rootfs import busybox_rootfs, safe_rmtree
    from fixtures.tools import install_tools, point_tools_at

    work = Path(tempfile.mkdtemp(prefix="nvc-bench-cdi-"))
    hosts = Path(tempfile.mkdtemp(prefix="nvc-bench-cdi-hosts-"))
    if not args.on_disk:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "nvc-bench", str(work)], check=True)
    os.environ.setdefault("NVC_CACHE_DIR", str(work / "nvml-cache"))
    (work / "nvml-cache").mkdir(mode=0o700)
    base = busybox_rootfs()
    print(f"median of {args.rounds} rounds (variants in a new order each) after {args.warmup} warm-up rounds, "
          f"settle {args.settle_ms:g} ms, bundles "
          f"{'on disk' if args.on_disk else 'on tmpfs'}, {os.cpu_count()} cpus, Python {sys.version.split()[0]}")
    counts = list(dict.fromkeys(int(c) for c in args.gpus.split(",")))
    versions = {"new": REPO, **({"old": args.compare.resolve()} if args.compare else {})}
    variants = [(kind, version) for kind in KINDS for version in (versions if kind in OURS else ("new",))]
    try:
        setups = {}
        for count in counts:
            host = make_gpu_host(hosts / f"host{count}", gpus=gpus(count), migs=())
            for version, repo in versions.items():
                bindir = hosts / f"bin{count}-{version}"
                env = install_tools(bindir, host)
                env["NVC_BENCH_DEVICES"] = ",".join(str(i) for i in range(count))
                if repo != REPO:  # the same wrappers, importing the older checkout's nvc
                    point_tools_at(bindir, repo)
                spec = generate_spec(env, str(host.root), repo)
                setups[count, version] = (env, spec, "0" if count == 1 else "all")
        samples = {(metric, count, variant): [] for metric in METRICS for count in counts for variant in variants}
        shuffler = random.Random(args.seed)
        for round_no in range(args.warmup + args.rounds):
            for count in counts:
                # A new order every round (seeded: runs are repeatable): drift within a round, and the previous
                # container's asynchronous teardown (mounts, cgroups) landing in the next run, hit every variant alike.
                order = shuffler.sample(variants, len(variants))
                for kind, version in order:
                    env, spec, device = setups[count, version]
                    wall, cpu = runc_once(work, env, base, kind, spec, device, args.settle_ms / 1000)
                    if round_no >= args.warmup:
                        samples["wall", count, (kind, version)].append(wall)
                        samples["cpu", count, (kind, version)].append(cpu)
        for count in counts:
            for metric in METRICS:
                report(count, setups[count, "new"][2], versions, metric,
                       {v: samples[metric, count, v] for v in variants})
        if args.samples:
            args.samples.write_text(json.dumps({f"{metric} {count} {kind} {version}": values for
                                                (metric, count, (kind, version)), values in samples.items()}, indent=1))
    finally:
        safe_rmtree(hosts)
        if args.on_disk:
            safe_rmtree(work)
        else:
            subprocess.run(["umount", "-l", str(work)], check=False)
            work.rmdir()
    return 0


def report(count: int, device: str, versions: dict[str, Path], metric: str,
           samples: dict[tuple[str, str], list[float]]) -> None:
    """Medians, the added time of each variant over the no-hook start, the target ratio; paired differences."""
    medians = {variant: statistics.median(values) for variant, values in samples.items()}
    floor = medians["none", "new"]
    print(f"{count} GPU(s), CDI device {device!r}, {METRICS[metric]}:")
    for (kind, version), median in medians.items():
        label = KINDS[kind] + (f" ({version}: {versions[version]})" if len(versions) > 1 and kind in OURS else "")
        added = "" if kind == "none" else f"  added {median - floor:5.1f} ms"
        print(f"  runc run /bin/true: {median:6.1f} ms  {label:40s}{added}")

    def added(kind: str, over: str = "none", version: str = "new") -> float:
        return medians[kind, version if kind in OURS else "new"] - medians[over, "new"]

    for version in versions:
        which = f" ({version})" if len(versions) > 1 else ""
        ratio = added("cdi", version=version) / added("legacy", version=version)
        print(f"  CDI path / legacy hook (added time){which}: {ratio:.2f} (target <= 0.50); our hook alone: "
              f"{added('cdi', 'cdi-edits', version):.1f} ms, over /bin/true as the hook: "
              f"{added('cdi', 'cdi-true', version):.1f} ms, over a bare Python hook: "
              f"{added('cdi', 'cdi-floor', version):.1f} ms; 4 hooks: "
              f"{added('cdi-4hooks', 'cdi-edits', version):.1f} ms")
    print(f"  floors: runc running /bin/true as the hook {added('cdi-true', 'cdi-edits'):.1f} ms, a bare Python "
          f"hook {added('cdi-floor', 'cdi-edits'):.1f} ms; runc making the spec's mounts {added('cdi-edits'):.1f} ms")
    if len(versions) > 1:
        for kind in OURS:
            diffs = [a - b for a, b in zip(samples[kind, "new"], samples[kind, "old"], strict=True)]
            print(f"  new - old, median of paired differences, {KINDS[kind]:40s} {statistics.median(diffs):+6.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
