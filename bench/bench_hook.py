#!/usr/bin/env python3
"""Benchmark of the OCI hook path (a report, not a test). Needs root.

Prints, on the fake GPU host (Debian 535 driver files, stub NVML, 1 GPU selected, utility+compute):
  - hook latency: `nvidia-container-runtime-hook prestart` from state on stdin to exit, for a fresh container
    (a held mount namespace + a fresh busybox rootfs copy each time), in-process injection vs. a hook that execs
    our `nvidia-container-cli configure` (NVIDIA's design: a second process per container);
  - `runc run /bin/true` on the busybox bundle: no hook, our hook in-process, our hook exec'ing the CLI —
    median of N alternating rounds, and the added time relative to the no-hook start.

Usage: python bench/bench_hook.py [-n ROUNDS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROBE_ENV = ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]


def held_namespace() -> subprocess.Popen:
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    while os.readlink(f"/proc/{proc.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        time.sleep(0.001)
    return proc


def hook_once(work: Path, env: dict[str, str], base_rootfs: Path) -> float:
    from fixtures.rootfs import copy_rootfs, safe_rmtree
    from fixtures.runtimes import make_bundle

    bundle = work / "hook-bundle"
    make_bundle(bundle, copy_rootfs(base_rootfs, bundle / "rootfs"), ["true"], env=PROBE_ENV)
    holder = held_namespace()
    try:
        state = json.dumps({"ociVersion": "1.0.2", "id": "b", "pid": holder.pid, "bundle": str(bundle)})
        start = time.perf_counter()
        res = subprocess.run([str(Path(env["PATH"].split(":")[0]) / "nvidia-container-runtime-hook"), "prestart"],
                             input=state, text=True, capture_output=True, env=env, check=False)
        elapsed = (time.perf_counter() - start) * 1000
        if res.returncode != 0:
            raise SystemExit(f"hook failed: {res.stderr}")
        return elapsed
    finally:
        holder.kill()
        holder.wait()
        safe_rmtree(bundle)


def runc_once(work: Path, env: dict[str, str], base_rootfs: Path, hook: bool) -> float:
    from fixtures.rootfs import copy_rootfs, safe_rmtree
    from fixtures.runtimes import make_bundle, unique_id

    bundle = work / "runc-bundle"
    hooks = None
    if hook:
        path = str(Path(env["PATH"].split(":")[0]) / "nvidia-container-runtime-hook")
        hooks = {"prestart": [{"path": path, "args": ["nvidia-container-runtime-hook", "prestart"]}]}
    make_bundle(bundle, copy_rootfs(base_rootfs, bundle / "rootfs"), ["/bin/true"], env=PROBE_ENV, hooks=hooks)
    state_dir = tempfile.mkdtemp(prefix="nvc-bench-runc-")
    cid = unique_id("bench")
    try:
        start = time.perf_counter()
        res = subprocess.run(["runc", "--root", state_dir, "run", "--bundle", str(bundle), cid],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False)
        elapsed = (time.perf_counter() - start) * 1000
        if res.returncode != 0:
            raise SystemExit(f"runc failed: {res.stderr}")
        return elapsed
    finally:
        subprocess.run(["runc", "--root", state_dir, "delete", "-f", cid], capture_output=True, check=False)
        shutil.rmtree(state_dir, ignore_errors=True)
        safe_rmtree(bundle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=15)
    args = parser.parse_args()
    from fixtures.gpu_host import make_gpu_host
    from fixtures.rootfs import busybox_rootfs
    from fixtures.tools import install_tools

    work = Path(tempfile.mkdtemp(prefix="nvc-bench-"))
    try:
        host = make_gpu_host(work / "host")
        base = busybox_rootfs()
        in_process = install_tools(work / "bin-inproc", host)
        cli_path = work / "bin-exec" / "nvidia-container-cli"
        exec_cli = install_tools(work / "bin-exec", host, f'path = "{cli_path}"\n')
        variants = {"in-process hook": in_process, "hook exec'ing our CLI": exec_cli}
        for env in variants.values():  # warm up caches (fixtures, page cache, pyc)
            hook_once(work, env, base)
            runc_once(work, env, base, hook=True)
        runc_once(work, in_process, base, hook=False)

        hook_times: dict[str, list[float]] = {name: [] for name in variants}
        runc_times: dict[str, list[float]] = {"no hook": [], **{name: [] for name in variants}}
        for _ in range(args.rounds):  # alternate variants so drift hits all alike
            runc_times["no hook"].append(runc_once(work, in_process, base, hook=False))
            for name, env in variants.items():
                hook_times[name].append(hook_once(work, env, base))
                runc_times[name].append(runc_once(work, env, base, hook=True))
        print(f"median of {args.rounds} alternating rounds, this machine ({os.cpu_count()} cpus)")
        print("hook latency (state on stdin -> exit), fresh container each time:")
        for name, samples in hook_times.items():
            print(f"  {statistics.median(samples):7.1f} ms  {name}")
        base_ms = statistics.median(runc_times["no hook"])
        print("runc run /bin/true (busybox bundle):")
        for name, samples in runc_times.items():
            med = statistics.median(samples)
            added = "" if name == "no hook" else f"   added {med - base_ms:6.1f} ms = {(med - base_ms) / base_ms:.2f}x"
            print(f"  {med:7.1f} ms  {name}{added}")
    finally:
        from fixtures.rootfs import safe_rmtree

        safe_rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
