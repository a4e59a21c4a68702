"""One grammar, two parsers: the click-free fast parser of nvc.request.argv and click (built from the same tables) must
give the very same GlobalOptions + ConfigureRequest (or the same error) for every line the fast parser accepts,
and leave every line it does not fully understand to click."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from nvc.commands import cli, cli_main, configure
from nvc.request import argv as grammar

RUNSC = ["--load-kmods", "configure", "--ldconfig=@/sbin/ldconfig", "--no-cgroups", "--pid=4242", "--device=0,1",
         "--cuda-compat-mode=mount", "--compute", "--utility", "/var/lib/runsc/rootfs"]
CONTAINERD = ["--load-kmods", "configure", "--device=0", "--compute", "--compat32", "--graphics", "--utility",
              "--video", "--display", "--pid=123", "/run/containerd/io.containerd.runtime.v2.task/default/c1/rootfs"]
NVIDIA_HOOK = ["--root=/run/nvidia/driver", "--load-kmods", "--no-pivot", "--debug=/var/log/nvidia-hook.log",
               "--ldcache=/etc/ld.so.cache", "--user=0:0", "configure", "--cuda-compat-mode=ldconfig",
               "--ldconfig=@/sbin/ldconfig", "--no-cgroups", "--device=GPU-3a0b,1", "--mig-config=all",
               "--mig-monitor=all", "--imex-channel=0,1", "--compat32", "--compute", "--display", "--graphics",
               "--ngx", "--utility", "--video", "--require=cuda>=12.0", "--require=brand=tesla,driver>=535",
               "--pid=77", "/rootfs"]

# Lines the fast parser must accept (and agree with click on).
FAST_LINES = [
    RUNSC,
    ["--load-kmods", "configure", "--ldconfig=@/sbin/ldconfig.real", "--no-cgroups", "--pid=9", "--device=all",
     "--compute", "--display", "--graphics", "--ngx", "--utility", "--video", "--compat32", "/r"],
    ["--load-kmods", "configure", "--ldconfig=@/sbin/ldconfig", "--no-cgroups", "--pid=9", "--device=",
     "--compute", "--utility", "/r"],
    CONTAINERD,
    ["--load-kmods", "configure", "--device=all", "--compute", "--utility", "--pid=1", "/r"],
    NVIDIA_HOOK,
    ["--user=", "configure", "/r"],
    ["-r", "/drv", "configure", "-p", "12", "-d", "0", "-d", "1", "-l", "/sbin/ldconfig", "/r"],
    ["-r/drv", "configure", "-p12", "-d0", "-l@/sbin/ldconfig", "/r"],
    ["-kn", "configure", "-cug", "-d1", "/r"],
    ["configure", "-cud0,1", "/r"],
    ["configure", "-cd", "0", "/r"],
    ["configure", "-vDn", "/r"],
    ["configure", "/r", "--compute", "-d", "0"],
    ["configure", "--compute", "--", "/r"],
    ["-k", "--", "configure", "/r"],
    ["configure"],
    ["configure", "/"],
    ["configure", "relative/rootfs"],
    ["configure", "--pid", "1", "--", "-weird"],
    ["--root=relative", "configure", "/r"],
    ["--root=", "configure", "/r"],
    ["configure", "--dry-run", "--exec-ldconfig", "--gvisor", "--no-devbind", "--no-persistenced",
     "--no-fabricmanager", "--no-gsp-firmware", "--no-cntlibs", "/r"],
    ["configure", "--cuda-compat-mode", "disabled", "/r"],
    ["configure", "--device", "--compute", "/r"],
    ["configure", "-d=0", "/r"],
    ["configure", "--ldconfig=/a", "--ldconfig", "/b", "-l/c", "/r"],
    ["configure", "--pid=+12", "/r"],
    ["--debug", "/tmp/log", "-l", "/etc/ld.so.cache.alt", "configure", "/r"],
    ["--no-create-imex-channels", "configure", "--imex-channel=3", "--imex-channel", "4", "/r"],
    ["configure", "--mig-config", "0:1", "--mig-monitor=all", "-d", "MIG-abc", "/r"],
    ["configure", "--require", "cuda>=11 brand=tesla", "-r", "arch>=7.0", "/r"],
    ["configure", "/r//sub/../rootfs/"],
    ["configure", "-", "--compute"],
    ["--version"],
    ["-V"],
    ["-kV", "configure", "--bogus"],
    ["--version", "info"],
    ["--root=relative", "--version"],
]

# Lines the fast parser must hand to click (help, unknown options, bad or missing values, other commands).
CLICK_LINES = [
    [],
    ["--help"],
    ["-h"],
    ["configure", "--help"],
    ["configure", "-h", "/r"],
    ["configure", "--bogus", "/r"],
    ["configure", "-x", "/r"],
    ["configure", "--pid=abc", "/r"],
    ["configure", "--pid="],
    ["configure", "--cuda-compat-mode=bogus", "/r"],
    ["configure", "--cuda-compat-mode=MOUNT", "/r"],
    ["configure", "--compute=1", "/r"],
    ["configure", "/a", "/b"],
    ["configure", "-d"],
    ["configure", "--device"],
    ["--user", "configure", "/r"],
    ["-u0", "configure", "/r"],
    ["--bogus", "configure", "/r"],
    ["--root"],
    ["--version=1"],
    ["--comp", "configure", "/r"],
    ["configure", "--comp", "/r"],
    ["info"],
    ["list", "-d", "0"],
    ["oci-edits", "/r"],
    ["bogus"],
    ["-k"],
    ["--", "bogus"],
]


def _outcome(entry, args, monkeypatch, capsys):
    """(exit status, stdout, stderr, what configure was asked) of one run."""
    calls = []
    monkeypatch.setattr(configure, "run_configure",
                        lambda opts, request, dry_run: calls.append((opts, request, dry_run)))
    monkeypatch.setattr(sys, "argv", ["nvidia-container-cli"])
    code = entry(list(args))
    out, err = capsys.readouterr()
    return code, out, err, calls


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("NVC_DRIVER_ROOT", raising=False)


def test_table_sizes():
    assert len(FAST_LINES) >= 30 and len(CLICK_LINES) >= 20


@pytest.mark.parametrize("args", FAST_LINES, ids=" ".join)
def test_fast_parser_agrees_with_click(args, monkeypatch, capsys):
    assert grammar.parse_command_line(args) is not None
    fast = _outcome(cli_main.main, args, monkeypatch, capsys)
    slow = _outcome(cli.click_main, args, monkeypatch, capsys)
    assert fast == slow
    if "--version" not in args and "-V" not in args and "-kV" not in args:
        assert (fast[0] == 0 and len(fast[3]) == 1) or (fast[0] == 1 and "error:" in fast[2])


def test_runsc_and_containerd_requests(monkeypatch, capsys):
    code, _, err, calls = _outcome(cli_main.main, RUNSC, monkeypatch, capsys)
    assert code == 0, err
    (opts, request, dry_run), = calls
    assert opts.load_kmods and opts.root == "/" and not dry_run
    assert request.pid == 4242 and request.devices == ("0", "1") and request.no_cgroups
    assert request.ldconfig == "@/sbin/ldconfig" and request.cuda_compat_mode == "mount"
    assert sorted(request.capabilities) == ["compute", "utility"]
    code, _, err, calls = _outcome(cli_main.main, CONTAINERD, monkeypatch, capsys)
    (opts, request, _), = calls
    assert request.pid == 123 and request.devices == ("0",) and not request.no_cgroups
    assert sorted(request.capabilities) == ["compat32", "compute", "display", "graphics", "utility", "video"]


@pytest.mark.parametrize("args", CLICK_LINES, ids=lambda a: " ".join(a) or "<empty>")
def test_fast_parser_leaves_the_rest_to_click(args, monkeypatch, capsys):
    assert grammar.parse_command_line(args) is None
    assert _outcome(cli_main.main, args, monkeypatch, capsys) == _outcome(cli.click_main, args, monkeypatch, capsys)


@pytest.mark.parametrize("root_env", ["/from/env", ""])
def test_driver_root_from_environment(root_env, monkeypatch, capsys):
    monkeypatch.setenv("NVC_DRIVER_ROOT", root_env)
    for args in (RUNSC, ["--root=/given", *RUNSC]):
        fast = _outcome(cli_main.main, args, monkeypatch, capsys)
        assert fast == _outcome(cli.click_main, args, monkeypatch, capsys)
        expected = "/given" if args[0] == "--root=/given" else (root_env or "/")
        assert fast[3][0][0].root == expected


def _spellings(opt: grammar.Opt, value: str) -> list[list[str]]:
    long = next(n for n in opt.names if n.startswith("--"))
    short = [n for n in opt.names if not n.startswith("--")]
    if opt.kind == grammar.FLAG:
        return [[long], *([[s] for s in short])]
    forms = [[f"{long}={value}"], [long, value]]
    for s in short:
        forms += [[s, value], [f"{s}{value}"]]
    return forms


def test_random_lines_agree(monkeypatch, capsys):
    """Random configure lines built from the grammar's own tables, every spelling of every option."""
    rng = random.Random(1234)
    values = {"pid": ["1", "31337"], "cuda_compat_mode": list(grammar.CUDA_COMPAT_MODES), "user": ["0:0", "65534"],
              "root": ["/drv", "/run/nvidia/driver"], "ldcache": ["/etc/ld.so.cache"], "debug": ["/tmp/d.log"]}
    configure_opts = list(grammar.CONFIGURE_OPTIONS)
    global_opts = [o for o in grammar.GLOBAL_OPTIONS if o.kind != grammar.VERSION]
    for _ in range(150):
        line = []
        for opt in rng.sample(global_opts, rng.randint(0, 3)):
            spelling = rng.choice(_spellings(opt, rng.choice(values.get(opt.dest, ["x"]))))
            if opt.kind == grammar.OPTIONAL and not spelling[0].startswith("--user="):
                continue  # the optional value is only unambiguous as --user=VALUE
            line += spelling
        line.append("configure")
        rootfs_at = rng.randint(0, 6)
        for i, opt in enumerate(rng.sample(configure_opts, rng.randint(1, 7))):
            if i == rootfs_at:
                line.append("/rootfs")
            line += rng.choice(_spellings(opt, rng.choice(values.get(opt.dest, ["0", "all", "1,2"]))))
        if "/rootfs" not in line:
            line.append("/rootfs")
        assert grammar.parse_command_line(line) is not None, line
        fast = _outcome(cli_main.main, line, monkeypatch, capsys)
        assert fast == _outcome(cli.click_main, line, monkeypatch, capsys), line


def _python_without_click(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    probe = ("import sys, atexit\n"
             "atexit.register(lambda: sys.stderr.write('CLICK-IMPORTED\\n' if 'click' in sys.modules else ''))\n"
             + code)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60,
                          env={**os.environ, **(env or {}), "PYTHONPATH": repo})


def test_version_and_configure_errors_do_not_import_click():
    res = _python_without_click("sys.argv[0] = 'nvidia-container-cli'\nfrom nvc.commands.cli_main import main\n"
                                "sys.exit(main(['--version']))")
    assert res.returncode == 0 and res.stdout.startswith("cli-version: ") and "CLICK" not in res.stderr
    res = _python_without_click("sys.argv[0] = 'nvidia-container-cli'\nfrom nvc.commands.cli_main import main\n"
                                "sys.exit(main(['--load-kmods', 'configure', '--pid=1', '/']))")
    assert res.returncode == 1
    assert res.stderr == "nvidia-container-cli: input error: invalid rootfs directory\n"
    res = _python_without_click("from nvc.commands.cli_main import main\nsys.exit(main(['configure', '--help']))")
    assert res.returncode == 0 and "--cuda-compat-mode" in res.stdout and "CLICK-IMPORTED" in res.stderr


@pytest.mark.root
def test_configure_dry_run_does_not_import_click(host, tmp_path):
    rootfs = tmp_path / "rootfs"
    for d in ("etc", "usr/lib64", "usr/bin", "dev", "proc", "tmp", "sbin"):
        (rootfs / d).mkdir(parents=True)
    args = ["--root", str(host.root), "configure", "--dry-run", "--ldconfig=@/sbin/ldconfig", "--no-cgroups",
            "--device=0", "--compute", "--utility", str(rootfs)]
    res = _python_without_click(f"from nvc.commands.cli_main import main\nsys.exit(main({args!r}))", env=host.env)
    assert res.returncode == 0, res.stderr
    assert "CLICK-IMPORTED" not in res.stderr
    assert "bind library" in res.stdout and "/usr/lib64/libcuda.so." in res.stdout


def test_version_text_matches_platform():
    import platform

    lines = grammar.version_text().splitlines()
    assert lines[0].startswith("cli-version: ") and lines[1].startswith("lib-version: ")
    assert lines[3] == f"build compiler: {platform.python_implementation()} {platform.python_version()}"
    assert lines[4] == f"build platform: {platform.machine()}"
