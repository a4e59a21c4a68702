#!/usr/bin/env python3
"""Benchmark of the inventory commands (a report, not a test).

Prints median wall times over N runs of:
  - ``python -c pass`` (the floor any Python CLI pays),
  - ``nvc --version`` and ``nvc --help`` (start-up without discovery),
  - ``nvc --root ROOT list`` on the full Debian driver root with the stub NVML (2 GPUs),
  - ``nvc ldcache -C CACHE`` vs glibc's ``ldconfig -p -C CACHE`` on the same cache (root's and host's),
  - import time of the modules on the list path (``python -X importtime``, cumulative, top entries).

Usage: python bench/bench_inventory.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def median_ms(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def import_profile(argv: list[str], env: dict[str, str], top: int = 8) -> list[tuple[int, str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env,
                          check=False)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            rows.append((int(m.group(1)), m.group(2).strip()))
    rows.sort(reverse=True)
    return rows[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--runs", type=int, default=21)
    args = parser.parse_args()

    from fixtures.demo_root import demo_root

    root = demo_root()
    env = dict(os.environ, NVML_STUB_CONFIG=str(REPO / "fixtures" / "demo-gpus.conf"))
    nvc = [sys.executable, "-m", "nvc"]
    cache = f"{root}/etc/ld.so.cache"
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("nvc --version", [*nvc, "--version"]),
        ("nvc --help", [*nvc, "--help"]),
        ("nvc --root ROOT list (stub NVML, 2 GPUs)", [*nvc, "--root", root, "list"]),
        ("nvc --root ROOT list --json", [*nvc, "--root", root, "list", "--json"]),
        ("nvc --root ROOT info", [*nvc, "--root", root, "info"]),
        ("nvc ldcache -C ROOT cache", [*nvc, "ldcache", "-C", cache]),
        ("ldconfig -p -C ROOT cache", ["ldconfig", "-p", "-C", cache]),
        ("nvc ldcache -C /etc/ld.so.cache", [*nvc, "ldcache", "-C", "/etc/ld.so.cache"]),
        ("ldconfig -p -C /etc/ld.so.cache", ["ldconfig", "-p", "-C", "/etc/ld.so.cache"]),
    ]
    print(f"median of {args.runs} runs, wall clock, this machine ({os.cpu_count()} cpus)")
    for label, argv in rows:
        median_ms(argv, 2, env)  # warm the page cache
        print(f"  {median_ms(argv, args.runs, env):8.1f} ms  {label}")
    print("import time, `nvc --root ROOT list` (cumulative us, top level):")
    for us, name in import_profile(["-m", "nvc", "--root", root, "list"], env):
        print(f"  {us:8d} us  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
