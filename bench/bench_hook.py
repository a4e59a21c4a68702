#!/usr/bin/env python3
"""Benchmark of the hot paths: every container start pays for them (a report, not a test). Needs root.

On the fake GPU host (Debian 535 driver files, stub NVML with a warm answer cache, utility+compute), with 1 GPU
and with 8 GPUs selected, prints medians of N alternating rounds of:
  - hook latency: `nvidia-container-runtime-hook prestart` from state on stdin to exit, for a fresh container
    (a held mount namespace + a fresh busybox rootfs copy each time), in its own process and via the helper;
  - `runc run /bin/true` on the busybox bundle: no hook; our hook (in-process, writing ld.so.cache itself);
    a shell hook exec'ing our `nvidia-container-cli configure` with the state's pid and rootfs (the harness the
    C tool's figure comes from: NVIDIA's Go hook and runsc exec the CLI the same way); containerd's `oci-hook`
    exec'ing our CLI, exactly what `ctr run --gpus` registers; our hook exec'ing the container's ldconfig
    instead (NVC_EXEC_LDCONFIG=1); our hook and the shell hook -> CLI once more with the hook helper taking the
    start (nvc/commands/hook_helper.py, running for the whole bench; every other variant sets NVC_NO_HELPER=1);
    and two floors no implementation in Python (resp. behind containerd) can go below: `python -I -S` reading
    the state, and containerd's oci-hook exec'ing /bin/true — each with the added time as a ratio of the no-hook
    start (issue 11's target: <= 0.65; NVIDIA's C tool adds 0.42-0.45 in the same harness).

Bundles (and the NVML answer cache, as /run/nvc on a real host) live on a private tmpfs unless --on-disk: on this
VM, creating files on the virtual disk stalls for 0.5-1 ms at times (ext4 journal), which doubles the hook's
figures for minutes at a time and swamps what we measure.

With --compare OLD_REPO, the same tools are installed a second time running OLD_REPO's nvc (an older checkout),
old and new alternate within every round, and each figure is printed for both with the median paired difference.

Usage: python bench/bench_hook.py [-n ROUNDS] [--gpus 1,8] [--warmup N] [--settle-ms MS] [--on-disk]
                                  [--compare OLD_REPO]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTLE_SECONDS = 0.0  # --settle-ms

PROBE_ENV = ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]


def held_namespace() -> subprocess.Popen:
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    while os.readlink(f"/proc/{proc.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        time.sleep(0.001)
    return proc


def hook_once(work: Path, env: dict[str, str], base_rootfs: Path, helper: bool = False) -> tuple[float, float]:
    """(wall ms, CPU ms: user + system of the hook process tree) of one hook run on a fresh container; ``helper``:
    handed to the running hook helper (its child's CPU time is not the hook's, so only wall time compares)."""
    from fixtures.rootfs import copy_rootfs, safe_rmtree
    from fixtures.runtimes import make_bundle

    bundle = work / "hook-bundle"
    make_bundle(bundle, copy_rootfs(base_rootfs, bundle / "rootfs"), ["true"],
                env=[f"NVIDIA_VISIBLE_DEVICES={env['NVC_BENCH_DEVICES']}", *PROBE_ENV[1:]])
    holder = held_namespace()
    try:
        state = json.dumps({"ociVersion": "1.0.2", "id": "b", "pid": holder.pid, "bundle": str(bundle)})
        time.sleep(SETTLE_SECONDS)  # let the previous run's asynchronous teardown (mounts, cgroups) finish
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        res = subprocess.run([str(Path(env["PATH"].split(":")[0]) / "nvidia-container-runtime-hook"), "prestart"],
                             input=state, text=True, capture_output=True, env=env if helper else no_helper(env),
                             check=False)
        elapsed = (time.perf_counter() - start) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise SystemExit(f"hook failed: {res.stderr}")
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
        return elapsed, cpu
    finally:
        holder.kill()
        holder.wait()
        safe_rmtree(bundle)


SHELL_HOOK = """#!/bin/sh
# The C tool's harness: a shell hook that takes pid and bundle from the state and execs the CLI, as NVIDIA's Go
# hook (and runsc) do. Parameter expansion only: runc writes the state as one compact JSON line.
state=$(cat)
pid=${state#*\\"pid\\":}; pid=${pid%%[!0-9]*}
bundle=${state#*\\"bundle\\":\\"}; bundle=${bundle%%\\"*}
exec nvidia-container-cli --load-kmods configure --device="$NVC_BENCH_DEVICES" --compute --utility \\
    --pid="$pid" "$bundle/rootfs"
"""


def no_helper(env: dict[str, str]) -> dict[str, str]:
    return {**env, "NVC_NO_HELPER": "1"}


def hook_entries(env: dict[str, str], kind: str) -> dict | None:
    """The prestart hook of each variant, as a runtime would register it."""
    bindir = Path(env["PATH"].split(":")[0])
    kind = kind.removesuffix("-helper")  # the same hook; the environment says whether the helper may take it
    if kind == "none":
        return None
    if kind == "floor-python":  # the interpreter alone, reading the state: what any Python hook pays
        code = "import sys; sys.stdin.read()"
        return {"prestart": [{"path": sys.executable, "args": ["python", "-I", "-S", "-c", code]}]}
    if kind == "floor-containerd":  # containerd's oci-hook exec'ing /bin/true: what `ctr --gpus` pays anyway
        containerd = shutil.which("containerd") or "/usr/bin/containerd"
        return {"prestart": [{"path": containerd, "args": ["containerd", "oci-hook", "--", "/bin/true"]}]}
    if kind == "cli-sh":
        script = bindir / "nvc-bench-cli-hook"
        if not script.exists():
            script.write_text(SHELL_HOOK)
            script.chmod(0o755)
        return {"prestart": [{"path": str(script)}]}  # no "env": runc hands hooks its own environment
    if kind == "cli":  # containerd's `ctr run --gpus`: its oci-hook fills pid/rootfs and execs our CLI
        containerd = shutil.which("containerd") or "/usr/bin/containerd"
        args = ["containerd", "oci-hook", "--", str(bindir / "nvidia-container-cli"), "--load-kmods", "configure",
                f"--device={env['NVC_BENCH_DEVICES']}", "--compute", "--utility", "--pid={{pid}}", "{{rootfs}}"]
        return {"prestart": [{"path": containerd, "args": args}]}
    path = str(bindir / "nvidia-container-runtime-hook")
    return {"prestart": [{"path": path, "args": ["nvidia-container-runtime-hook", "prestart"]}]}


def runc_once(work: Path, env: dict[str, str], base_rootfs: Path, kind: str) -> float:
    from fixtures.rootfs import copy_rootfs, safe_rmtree
    from fixtures.runtimes import make_bundle, unique_id

    bundle = work / "runc-bundle"
    make_bundle(bundle, copy_rootfs(base_rootfs, bundle / "rootfs"), ["/bin/true"],
                env=[f"NVIDIA_VISIBLE_DEVICES={env['NVC_BENCH_DEVICES']}", *PROBE_ENV[1:]],
                hooks=hook_entries(env, kind))
    state_dir = tempfile.mkdtemp(prefix="nvc-bench-runc-")
    cid = unique_id("bench")
    run_env = dict(env, NVC_EXEC_LDCONFIG="1") if kind == "exec-ldconfig" else env
    if not kind.endswith("-helper"):
        run_env = no_helper(run_env)
    try:
        time.sleep(SETTLE_SECONDS)  # let the previous run's asynchronous teardown (mounts, cgroups) finish
        start = time.perf_counter()
        res = subprocess.run(["runc", "--root", state_dir, "run", "--bundle", str(bundle), cid],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, env=run_env, check=False)
        elapsed = (time.perf_counter() - start) * 1000
        if res.returncode != 0:
            raise SystemExit(f"runc ({kind}) failed: {res.stderr}")
        return elapsed
    finally:
        subprocess.run(["runc", "--root", state_dir, "delete", "-f", cid], capture_output=True, check=False)
        shutil.rmtree(state_dir, ignore_errors=True)
        safe_rmtree(bundle)


KINDS = {
    "none": "no hook",
    "hook": "our hook (in-process)",
    "cli-sh": "shell hook -> our CLI configure",
    "cli": "containerd oci-hook -> our CLI configure",
    "exec-ldconfig": "our hook, exec'ing ldconfig",
    "hook-helper": "our hook, via the hook helper",
    "cli-sh-helper": "shell hook -> our CLI, via the hook helper",
    "floor-python": "floor: python -I -S reading the state",
    "floor-containerd": "floor: containerd oci-hook -> /bin/true",
}


def start_helper(env: dict[str, str]) -> subprocess.Popen:
    """This checkout's hook helper (nvc/commands/hook_helper.py) on the bench's cache directory, as its service
    runs it; only the ``-helper`` variants let the launchers use it (the others set NVC_NO_HELPER). An older
    checkout (--compare) has no client: its ``-helper`` variants run in the hook's own process."""
    from fixtures.tools import _site_dirs

    path = [str(REPO), *_site_dirs()]
    code = f"import sys; sys.path[:0] = {path!r}; from nvc.commands.hook_helper import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "listening on" not in line:
        raise SystemExit(f"the hook helper did not start: {line}{proc.stderr.read()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # its log, one line a start: drained
    return proc


def gpus(count: int) -> list[dict]:
    return [{"index": i, "minor": i, "name": "NVIDIA A100-SXM4-80GB", "brand": "TESLA",
             "uuid": f"GPU-{i:08x}-1111-2222-3333-444444444444", "bus": f"0000:{0x10 + i:02x}:00.0", "cc": "8.0"}
            for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=15)
    parser.add_argument("--gpus", default="1,8", help="comma-separated GPU counts to run")
    parser.add_argument("--warmup", type=int, default=3, help="rounds run first and not counted")
    parser.add_argument("--on-disk", action="store_true",
                        help="keep bundles on /tmp's file system instead of a private tmpfs: on this VM, file creation "
                             "on the virtual disk stalls for 0.5-1 ms at times (journal), which swamps what we measure")
    parser.add_argument("--settle-ms", type=float, default=0.0,
                        help="pause before each timed run, so the kernel's asynchronous teardown of the previous "
                             "container (mount namespaces, cgroups) does not land in the next measurement")
    parser.add_argument("--compare", type=Path, help="an older checkout to alternate with")
    args = parser.parse_args()
    global SETTLE_SECONDS
    SETTLE_SECONDS = args.settle_ms / 1000
    from fixtures.gpu_host import make_gpu_host
    from fixtures.rootfs import busybox_rootfs, safe_rmtree
    from fixtures.tools import install_tools, point_tools_at

    work = Path(tempfile.mkdtemp(prefix="nvc-bench-"))  # bundles and the NVML answer cache
    hosts = Path(tempfile.mkdtemp(prefix="nvc-bench-hosts-"))  # fake GPU hosts: hard links into the fixture cache
    if not args.on_disk:  # the NVML answer cache lives on tmpfs too, as /run/nvc does on a real host
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "nvc-bench", str(work)], check=True)
    os.environ.setdefault("NVC_CACHE_DIR", str(work / "nvml-cache"))
    (work / "nvml-cache").mkdir(mode=0o700)
    base = busybox_rootfs()
    print(f"median of {args.rounds} alternating rounds after {args.warmup} warm-up rounds, settle "
          f"{args.settle_ms:g} ms, bundles {'on disk' if args.on_disk else 'on tmpfs'}, this machine "
          f"({os.cpu_count()} cpus), {sys.executable} "
          f"(Python {sys.version.split()[0]})")
    counts = list(dict.fromkeys(int(c) for c in args.gpus.split(",")))
    versions = {"new": REPO, **({"old": args.compare.resolve()} if args.compare else {})}
    for repo in versions.values():  # the bytecode bundle the launchers read (scripts/setup.sh builds it too)
        if (repo / "nvc/bytecode_bundle.py").exists():
            subprocess.run([sys.executable, "-m", "nvc.bytecode_bundle", str(repo / "nvc")], cwd=repo, check=True,
                           stdout=subprocess.DEVNULL)
    helpers: dict[int, subprocess.Popen] = {}
    try:
        envs: dict[tuple[str, int], dict[str, str]] = {}
        for count in counts:
            host = make_gpu_host(hosts / f"host{count}", gpus=gpus(count), migs=())
            for version, repo in versions.items():
                bindir = hosts / f"bin{count}-{version}"
                envs[version, count] = install_tools(bindir, host)
                envs[version, count]["NVC_BENCH_DEVICES"] = ",".join(str(i) for i in range(count))
                # One host, one config.toml, one answer cache and one hook helper (as /run/nvc on a real host):
                # each GPU count is its own host here.
                cache = work / f"nvml-cache-{count}"
                cache.mkdir(mode=0o700, exist_ok=True)
                envs[version, count]["NVC_CACHE_DIR"] = str(cache)
                if repo != REPO:  # the same wrappers, importing the older checkout's nvc
                    point_tools_at(bindir, repo)
        helpers = {count: start_helper(envs["new", count]) for count in counts}
        for _ in range(args.warmup):  # fixtures, page cache, pyc files, the NVML and inventory answer caches
            for env in envs.values():
                for kind in KINDS:
                    runc_once(work, env, base, kind)
                hook_once(work, env, base)
                hook_once(work, env, base, helper=True)
        hook_samples: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in envs}
        helper_samples: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in envs}
        runc_samples = {key: {kind: [] for kind in KINDS} for key in envs}
        for _ in range(args.rounds):  # alternate kinds, versions and GPU counts so drift hits every variant alike
            for count in counts:
                for kind in ("hook-latency", "hook-latency-helper", *KINDS):
                    for version in versions:
                        env = envs[version, count]
                        if kind == "hook-latency":
                            hook_samples[version, count].append(hook_once(work, env, base))
                        elif kind == "hook-latency-helper":
                            helper_samples[version, count].append(hook_once(work, env, base, helper=True))
                        else:
                            runc_samples[version, count][kind].append(runc_once(work, env, base, kind))
        for count, helper in helpers.items():
            if helper.poll() is not None:  # e.g. nvc's files were edited during the run: it exits for the new code
                print(f"WARNING: the hook helper of the {count}-GPU host exited during the run: its figures are "
                      "partly or wholly in the hook's own process")
        for count in counts:
            for version in versions:
                key = (version, count)
                print(f"{count} GPU(s) selected{f' ({version}: {versions[version]})' if args.compare else ''}:")
                wall = statistics.median(w for w, _ in hook_samples[key])
                cpu = statistics.median(c for _, c in hook_samples[key])
                print(f"  hook latency (state on stdin -> exit): {wall:6.1f} ms wall, {cpu:6.1f} ms CPU (user+sys)")
                helped = statistics.median(w for w, _ in helper_samples[key])
                print(f"  hook latency via the hook helper:      {helped:6.1f} ms wall")
                base_ms = statistics.median(runc_samples[key]["none"])
                for kind, label in KINDS.items():
                    med = statistics.median(runc_samples[key][kind])
                    added = med - base_ms
                    ratio = "" if kind == "none" else f"  added {added:5.1f} ms, ratio {added / base_ms:.2f}"
                    print(f"  runc run /bin/true: {med:6.1f} ms  {label:42s}{ratio}")
            if args.compare:
                new, old = ("new", count), ("old", count)
                diffs = [a[0] - b[0] for a, b in zip(hook_samples[new], hook_samples[old], strict=True)]
                print(f"{count} GPU(s), new - old, median of paired differences: hook latency "
                      f"{statistics.median(diffs):+.2f} ms")
                for kind, label in KINDS.items():
                    diffs = [a - b for a, b in zip(runc_samples[new][kind], runc_samples[old][kind], strict=True)]
                    print(f"  runc run /bin/true, {label:42s} {statistics.median(diffs):+6.2f} ms")
    finally:
        for helper in helpers.values():
            helper.terminate()
            helper.wait()
        safe_rmtree(hosts)
        if args.on_disk:
            safe_rmtree(work)
        else:  # everything the bench made lives in the tmpfs
            subprocess.run(["umount", "-l", str(work)], check=False)
            work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
