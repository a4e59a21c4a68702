#!/usr/bin/env python3
"""Benchmark of what every container on a GPU node pays, GPU or not (a report, not a test). Needs root.

Through the installed launchers, laid out as a normal (non-editable) install would be — a prefix with its own
site-packages holding nvc and its dependencies, the sh launchers in its bin/ — prints medians of N interleaved
rounds of:
  - `nvidia-container-runtime run` + `delete` of a busybox container that asks for no GPU, against `runc run` +
    `runc delete` (issue 11's yardstick: NVIDIA's Go shim + hook add about 10.7 ms here);
  - the same for a GPU container (the shim adds our hook; compared with runc + our hook registered directly);
  - each shim subcommand's own cost: the launcher in front of a stand-in runtime (/bin/true) minus the stand-in;
  - our hook on a container without NVIDIA variables, against a bare `python -I -S` reading the state;
  - the modules each of those Python paths imports.
With --compare OLD_REPO, the same install is made from OLD_REPO's nvc and launchers and every variant alternates
old/new within each round; medians of the paired differences are printed.

Bundles live on a private tmpfs, as in bench_hook.py.

Usage: python bench/bench_shim.py [-n ROUNDS] [--warmup N] [--compare OLD_REPO]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LAUNCHERS = ("nvidia-container-cli", "nvidia-container-runtime", "nvidia-container-runtime-hook")


def make_install(prefix: Path, repo: Path) -> Path:
    """A prefix as `pip install .` leaves it: pyvenv.cfg, bin/python, bin/nvc, the launchers, and a
    site-packages with nvc (linked to ``repo``) and this interpreter's packages (linked)."""
    real = os.path.realpath(sys.executable)
    (prefix / "bin").mkdir(parents=True)
    tail = f"python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    site = prefix / "lib" / tail
    site.mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text(f"home = {os.path.dirname(real)}\ninclude-system-site-packages = false\n")
    (prefix / "bin/python").symlink_to(real)
    for key in ("purelib", "platlib"):
        src = Path(sysconfig.get_paths()[key])
        for entry in src.iterdir() if src.is_dir() else ():
            if "editable" in entry.name or entry.suffix == ".pth" or entry.name in ("nvc", "__pycache__"):
                continue
            if not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
    (site / "nvc").symlink_to(repo / "nvc")
    from fixtures.tools import console_entry

    module, function = console_entry(repo)  # an older checkout's entry point may live elsewhere
    (prefix / "bin/nvc").write_text(f"#!{prefix}/bin/python\nimport sys\nfrom {module} import {function}\n"
                                    f"sys.exit({function}())\n")
    (prefix / "bin/nvc").chmod(0o755)
    for name in LAUNCHERS:
        shutil.copy2(repo / "scripts/launchers" / name, prefix / "bin" / name)
    if (repo / "nvc/bytecode_bundle.py").exists():  # the bundle the launchers read, as setup.sh and postinst build it
        subprocess.run([sys.executable, "-m", "nvc.bytecode_bundle", str(repo / "nvc")], cwd=repo, check=True,
                       stdout=subprocess.DEVNULL)
    return prefix / "bin"


def timed(cmd: list[str], env: dict[str, str], stdin: str | None = None, cwd: str | None = None,
          ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, cwd=cwd, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if res.returncode not in ok:
        raise SystemExit(f"{cmd[:3]} failed ({res.returncode}): {res.stderr}")
    return elapsed


def run_delete(runtime: list[str], env: dict[str, str], bundle: Path, state: str, cid: str) -> float:
    first = timed([*runtime, "--root", state, "run", "--bundle", str(bundle), cid], env)
    return first + timed([*runtime, "--root", state, "delete", "-f", cid], env)


def import_profile(bindir: Path, env: dict[str, str], args: list[str], stdin: str | None, cwd: str | None) -> str:
    """Modules and ms of imports (python -X importtime) of one launcher call that ends up in Python."""
    code_env = dict(env, NVC_IMPORT_PROFILE="1")
    launcher = bindir / args[0]
    res = subprocess.run([str(bindir / "python"), "-X", "importtime", "-I", "-S", str(launcher), *args[1:]],
                         env=code_env, input=stdin, capture_output=True, text=True, cwd=cwd, check=False)
    rows = [line for line in res.stderr.splitlines() if line.startswith("import time:") and "|" in line]
    mods = [row.rsplit("|", 1)[1].strip() for row in rows[1:]]
    total = sum(int(row.split("|")[0].split(":")[1]) for row in rows[1:]) / 1000
    ours = [m for m in mods if m.startswith("nvc")]
    return f"{len(mods)} modules ({len(ours)} of nvc: {', '.join(ours)}), self time {total:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="an older checkout to alternate with")
    args = parser.parse_args()
    from fixtures.gpu_host import make_gpu_host
    from fixtures.rootfs import busybox_rootfs, copy_rootfs
    from fixtures.runtimes import make_bundle
    from fixtures.tools import install_tools

    work = Path(tempfile.mkdtemp(prefix="nvc-bench-shim-"))
    hosts = Path(tempfile.mkdtemp(prefix="nvc-bench-shim-hosts-"))  # hard links into the fixture cache: on disk
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "nvc-bench-shim", str(work)], check=True)
    try:
        cache = work / "cache"
        cache.mkdir(mode=0o700)
        os.environ["NVC_CACHE_DIR"] = str(cache)
        host = make_gpu_host(hosts / "host", gpus=[{"index": 0, "minor": 0, "name": "NVIDIA A100-SXM4-80GB",
                                                  "brand": "TESLA", "uuid": "GPU-00000000-1111-2222-3333-444444444444",
                                                  "bus": "0000:10:00.0", "cc": "8.0"}], migs=())
        tools_env = install_tools(work / "tools", host)
        versions = {"new": REPO, **({"old": args.compare.resolve()} if args.compare else {})}
        bins = {name: make_install(work / f"install-{name}", repo) for name, repo in versions.items()}
        config = Path(tools_env["NVIDIA_CTK_CONFIG_FILE_PATH"])
        config.write_text(config.read_text() + '[nvidia-container-runtime]\nmode = "legacy"\n')
        standin_config = work / "standin.toml"
        standin_config.write_text('[nvidia-container-runtime]\nruntimes = ["/bin/true"]\n')
        envs = {name: dict(tools_env, PATH=f"{b}:{tools_env['PATH']}", NVC_CACHE_DIR=str(cache / name))
                for name, b in bins.items()}
        for name in envs:
            (cache / name).mkdir(mode=0o700)
            (cache / f"{name}-standin").mkdir(mode=0o700)
        base = busybox_rootfs()
        plain = work / "plain"
        make_bundle(plain, copy_rootfs(base, plain / "rootfs"), ["/bin/true"], env=["PATH=/bin"])
        gpu_bundles = {}
        for name in envs:  # the shim edits a GPU bundle's config.json: one pristine copy per run
            gpu_bundles[name] = work / f"gpu-{name}"
        gpu_rootfs = work / "gpu-rootfs"
        copy_rootfs(base, gpu_rootfs)
        state = json.dumps({"ociVersion": "1.0.2", "id": "x", "pid": os.getpid(), "bundle": str(plain)})
        time.sleep(2.2)  # config.toml must settle before a memo may rely on its mtime (nvc/prefilter.py)

        def fresh_gpu_bundle(path: Path) -> Path:
            if path.exists():
                shutil.rmtree(path)
            make_bundle(path, gpu_rootfs, ["/bin/true"],
                        env=["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"])
            return path

        hook_direct = work / "hook-direct"
        make_bundle(hook_direct, gpu_rootfs, ["/bin/true"],
                    env=["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
                    hooks={"prestart": [{"path": str(bins["new"] / "nvidia-container-runtime-hook"),
                                         "args": ["nvidia-container-runtime-hook", "prestart"]}]})
        statedir = tempfile.mkdtemp(prefix="nvc-bench-state-")
        counter = [0]

        def cid() -> str:
            counter[0] += 1
            return f"bench-shim-{os.getpid()}-{counter[0]}"

        samples: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            samples.setdefault(key, []).append(value)

        def one_round(record: bool) -> None:
            put = add if record else (lambda _k, _v: None)
            put("runc run+delete, no GPU", run_delete(["runc"], tools_env, plain, statedir, cid()))
            put("runc run+delete, our hook direct", run_delete(["runc"], envs["new"], hook_direct, statedir, cid()))
            put("bare python -I -S reading the state",
                timed([str(bins["new"] / "python"), "-I", "-S", "-c", "import sys; sys.stdin.read()"], tools_env,
                      stdin=state))
            for standin in ("start", "state", "kill", "delete"):
                put(f"/bin/true {standin}", timed(["/bin/true", standin, "id"], tools_env))
            put("/bin/true create", timed(["/bin/true", "create", "--bundle", str(plain), "id"], tools_env))
            for name, env in envs.items():
                shim = [str(bins[name] / "nvidia-container-runtime")]
                put(f"{name}: shim run+delete, no GPU", run_delete(shim, env, plain, statedir, cid()))
                put(f"{name}: shim run+delete, GPU",
                    run_delete(shim, env, fresh_gpu_bundle(gpu_bundles[name]), statedir, cid()))
                put(f"{name}: hook, no NVIDIA variables",
                    timed([str(bins[name] / "nvidia-container-runtime-hook"), "prestart"], env, stdin=state))
                standin_env = dict(env, NVIDIA_CTK_CONFIG_FILE_PATH=str(standin_config),
                                   NVC_CACHE_DIR=str(cache / f"{name}-standin"))  # one memo per config
                for sub in ("start", "state", "kill", "delete"):
                    put(f"{name}: shim {sub} (own cost)", timed([*shim, sub, "id"], standin_env))
                put(f"{name}: shim create, no GPU (own cost)",
                    timed([*shim, "create", "--bundle", str(plain), "id"], standin_env))

        for _ in range(args.warmup):
            one_round(False)
        for _ in range(args.rounds):
            one_round(True)
        med = {key: statistics.median(values) for key, values in samples.items()}
        print(f"median of {args.rounds} interleaved rounds after {args.warmup} warm-up rounds, bundles on tmpfs, "
              f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at the end, "
              f"{os.path.realpath(sys.executable)}")
        runc = med["runc run+delete, no GPU"]
        hooked = med["runc run+delete, our hook direct"]
        bare = med["bare python -I -S reading the state"]
        print(f"  runc run+delete, no GPU: {runc:.1f} ms; with our hook registered directly (GPU): {hooked:.1f} ms;"
              f" bare python -I -S: {bare:.1f} ms")
        for name in envs:
            print(f"  [{name}]")
            no_gpu = med[f"{name}: shim run+delete, no GPU"]
            gpu = med[f"{name}: shim run+delete, GPU"]
            print(f"    shim run+delete, no GPU: {no_gpu:.1f} ms, added {no_gpu - runc:+.1f} ms "
                  f"(NVIDIA's Go shim + hook: +10.7 ms)")
            print(f"    shim run+delete, GPU: {gpu:.1f} ms, the shim's own share {gpu - hooked:+.1f} ms")
            hook = med[f"{name}: hook, no NVIDIA variables"]
            print(f"    hook, no NVIDIA variables: {hook:.1f} ms = {hook / bare:.2f} x bare python")
            for sub in ("start", "state", "kill", "delete"):
                own = med[f"{name}: shim {sub} (own cost)"] - med[f"/bin/true {sub}"]
                print(f"    shim {sub}: own cost {own:+.2f} ms")
            own = med[f"{name}: shim create, no GPU (own cost)"] - med["/bin/true create"]
            print(f"    shim create, no GPU: own cost {own:+.2f} ms")
        if "old" in envs:
            print("  paired differences new - old (median of per-round differences):")
            for key in sorted(k for k in samples if k.startswith("new: ")):
                old_key = "old: " + key[5:]
                diffs = [n - o for n, o in zip(samples[key], samples[old_key], strict=True)]
                print(f"    {key[5:]:45s} {statistics.median(diffs):+7.2f} ms "
                      f"(old {med[old_key]:.1f} -> new {med[key]:.1f})")
        print("  imports of the Python paths:")
        for name, env in envs.items():
            print(f"    [{name}] hook, no NVIDIA variables: "
                  + import_profile(bins[name], env, ["nvidia-container-runtime-hook", "prestart"], state, None))
            # the stand-in runtime: nothing is created; another PATH: the memo does not match, Python decides
            standin_env = dict(env, PATH=f"/nonexistent:{env['PATH']}", NVIDIA_CTK_CONFIG_FILE_PATH=str(standin_config))
            print(f"    [{name}] shim create (GPU bundle, legacy mode): "
                  + import_profile(bins[name], standin_env,
                                   ["nvidia-container-runtime", "create", "--bundle",
                                    str(fresh_gpu_bundle(gpu_bundles[name])), "x"], None, None))
        shutil.rmtree(statedir, ignore_errors=True)
    finally:
        from fixtures.rootfs import safe_rmtree

        safe_rmtree(hosts)
        subprocess.run(["umount", "-l", str(work)], check=False)
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
