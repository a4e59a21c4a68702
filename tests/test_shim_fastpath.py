"""The runtime shim's sh fast path (scripts/launchers/nvidia-container-runtime) and the pre-filter it shares with
the hook (nvc/prefilter.py): it may send any call to Python, but must never let a GPU container past Python.

The launcher runs for real under /bin/sh with the real grep; "Python" is a stand-in interpreter named in the `nvc`
script's shebang, so each call shows which way it went: PYTHON (the Python shim would decide) or RUNTIME (the
fast path exec'd the low-level runtime)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nvc import prefilter
from nvc.commands import prefilter_memo, runtime_shim
from nvc.commands.runtime_shim import find_bundle, find_command, passthrough_runtimes
from nvc.errors import NvcError
from nvc.request.container_env import gpu_request_from_spec
from nvc.request.runtime_config import RuntimeConfig, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "scripts/launchers/nvidia-container-runtime"

RECORDER = """#!/bin/sh
printf '%s\\n' "{tag} $*" >> "$FASTPATH_LOG"
"""


class Lab:
    """A bin directory as pip leaves it (launcher + `nvc` whose shebang names a stand-in python), a low-level
    runtime stand-in, a config.toml, a private cache directory, and the memo the Python shim would write."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, config_text: str | None = None) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.rtdir = tmp / "rt"
        for d in (self.bin, self.rtdir):
            d.mkdir()
        self.log = tmp / "log"
        fake_python = self.bin / "fakepython"
        fake_python.write_text(RECORDER.format(tag="PYTHON"))
        fake_python.chmod(0o755)
        (self.bin / "nvc").write_text(f"#!{fake_python}\n")
        self.launcher = self.bin / "nvidia-container-runtime"
        shutil.copy2(LAUNCHER, self.launcher)
        self.runtime = self.rtdir / "runc"
        self.runtime.write_text(RECORDER.format(tag="RUNTIME"))
        self.runtime.chmod(0o755)
        self.config = tmp / "config.toml"
        self.config.write_text(config_text if config_text is not None else
                               '[nvidia-container-runtime]\nruntimes = ["missing-runtime", "runc"]\n')
        self.cache = tmp / "cache"
        self.env = {"PATH": f"{self.rtdir}:{self.bin}:/usr/bin:/bin", "NVC_CACHE_DIR": str(self.cache),
                    "NVIDIA_CTK_CONFIG_FILE_PATH": str(self.config), "FASTPATH_LOG": str(self.log)}
        monkeypatch.setattr(prefilter, "SETTLE_NS", 0)
        monkeypatch.setenv("NVC_CACHE_DIR", str(self.cache))
        monkeypatch.delenv("NVC_NO_CACHE", raising=False)

    def load(self) -> RuntimeConfig:
        return load_config(None, self.env)

    def remember(self) -> None:
        """What the Python shim's create path does after it found the runtime."""
        config = self.load()
        runtime_shim._remember_shim_decision(self.env, config, str(self.runtime), os.path.realpath(self.launcher))

    def __call__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        self.log.write_text("")
        res = subprocess.run([str(self.launcher), *args], env=dict(self.env, **(env or {})), cwd=cwd or self.tmp,
                             capture_output=True, text=True, timeout=30, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stderr == ""  # nothing of the fast path's own reaches the runtime's stderr
        out = self.log.read_text().splitlines()
        assert len(out) == 1, out
        tag, _, rest = out[0].partition(" ")
        if tag == "PYTHON":
            rest = rest.removeprefix(f"-I -S {self.launcher} ")
        assert rest == " ".join(args)  # the same argv either way
        return tag


@pytest.fixture
def lab(tmp_path, monkeypatch):
    return Lab(tmp_path, monkeypatch)


def spec(env: list[str] | None = None, **extra) -> dict:
    doc: dict = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "env": ["PATH=/bin", *(env or [])], "cwd": "/"},
                 "root": {"path": "rootfs"}, "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]}
    doc.update(extra)
    return doc


def bundle(path: Path, content: bytes | dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (path / "config.json").write_bytes(data)
    return path


def _escape_all(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


DEVICE_MOUNT = {"source": "/dev/null", "destination": "/var/run/nvidia-container-devices/0", "type": "bind"}
VOLUME_CONFIG = "accept-nvidia-visible-devices-as-volume-mounts = true\n"
SWARM_CONFIG = 'swarm-resource = "DOCKER_RESOURCE_GPU"\n'

#: config.json variants that ARE GPU containers by NVIDIA's rules (config text, raw bytes)
GPU_VARIANTS = {
    "env": ("", json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=0"])).encode()),
    "env-all-indented": ("", json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=all"]), indent=4).encode()),
    "legacy-cuda-image": ("", json.dumps(spec(["CUDA_VERSION=11.0"])).encode()),
    "name-escaped": ("", json.dumps(spec()).replace('"PATH=/bin"', '"PATH=/bin", "'
                                                    + _escape_all("NVIDIA_VISIBLE_DEVICES") + '=0"').encode()),
    "one-letter-escaped": ("", json.dumps(spec()).replace('"PATH=/bin"',
                                                          '"PATH=/bin", "NVIDIA\\u005fVISIBLE_DEVICES=0"').encode()),
    "utf-16": ("", json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=0"])).encode("utf-16")),
    "utf-32-le": ("", json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=0"])).encode("utf-32-le")),
    "utf-8-bom": ("", b"\xef\xbb\xbf" + json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=0"])).encode()),
    "huge-marker-last": ("", json.dumps(spec([*(f"V{i}={'x' * 200}" for i in range(12000)),
                                              "NVIDIA_VISIBLE_DEVICES=0"])).encode()),
    "volume-mount": (VOLUME_CONFIG, json.dumps(spec(mounts=[DEVICE_MOUNT])).encode()),
    "volume-mount-slashes-escaped": (VOLUME_CONFIG, json.dumps(spec(mounts=[DEVICE_MOUNT])).replace(
        "/", "\\/").encode()),
    "volume-mount-dotted": (VOLUME_CONFIG, json.dumps(spec(mounts=[dict(
        DEVICE_MOUNT, destination="/var//run/./nvidia-container-devices/1")])).encode()),
    "swarm": (SWARM_CONFIG, json.dumps(spec(["DOCKER_RESOURCE_GPU=1"])).encode()),
}
#: and ones that are not, of which the fast path must let the plain ones through
CLEAN_VARIANTS = {
    "plain": json.dumps(spec()).encode(),
    "huge-plain": json.dumps(spec([f"V{i}={'x' * 200}" for i in range(12000)])).encode(),
    "other-env": json.dumps(spec(["CUDA_HOME=/usr/local/cuda", "NVIDIA=1", "GPU=0"]), indent=2).encode(),
    "escaped-quotes": json.dumps(spec(['MSG=say "hi"\tthere/there'])).encode(),
}
#: not GPU containers, but with a marker: Python decides (a false positive costs time, not correctness)
MAYBE_VARIANTS = {
    "void": json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=void"])).encode(),
    "cdi-annotation": json.dumps(spec(annotations={"cdi.k8s.io/gpu": "nvidia.com/gpu=0"})).encode(),
    "cdi-annotation-escaped": json.dumps(spec(annotations={"cdi.k8s.io/gpu": "x"})).replace("/", "\\/").encode(),
    "non-ascii-escaped": json.dumps(spec(["NAME=caf\u00e9"])).encode(),
}


def _python_says_gpu(config_text: str, data: bytes) -> bool:
    return gpu_request_from_spec(json.loads(data), parse_config(config_text)) is not None


@pytest.mark.parametrize("name", GPU_VARIANTS)
def test_gpu_containers_always_reach_python(lab, name):
    config_text, data = GPU_VARIANTS[name]
    assert _python_says_gpu(config_text, data), name  # the table is right: NVIDIA's rules see a GPU container
    lab.config.write_text(config_text + '[nvidia-container-runtime]\nruntimes = ["runc"]\n')
    lab.remember()
    assert prefilter.may_request_gpu(data, prefilter_memo.markers_for(lab.load()))
    b = bundle(lab.tmp / "b", data)
    assert lab("create", "--bundle", str(b), "id") == "PYTHON"
    assert lab("run", "id", cwd=b) == "PYTHON"
    assert lab("delete", "id") == "RUNTIME"  # and the memo itself was good


@pytest.mark.parametrize("name", CLEAN_VARIANTS)
def test_plain_containers_skip_python(lab, name):
    data = CLEAN_VARIANTS[name]
    assert not _python_says_gpu("", data)
    lab.remember()
    b = bundle(lab.tmp / "b", data)
    assert lab("create", "--bundle", str(b), "id") == "RUNTIME"
    assert lab("--root", "/run/x", "--log-format", "json", "run", "-b", str(b), "--pid-file", "/p", "id") == "RUNTIME"
    assert lab("create", "id", cwd=b) == "RUNTIME"
    for args in (["start", "id"], ["state", "id"], ["kill", "id", "9"], ["delete", "-f", "id"], ["--version"]):
        assert lab(*args) == "RUNTIME"


@pytest.mark.parametrize("name", MAYBE_VARIANTS)
def test_markers_without_a_gpu_request_go_to_python(lab, name):
    lab.remember()
    assert lab("create", "-b", str(bundle(lab.tmp / "b", MAYBE_VARIANTS[name])), "id") == "PYTHON"


def test_random_specs_never_skip_a_gpu_container():
    """Specs built from NVIDIA's variables in every JSON spelling: whenever the rules see a GPU request, the
    pre-filter says maybe."""
    rng = random.Random(11)
    configs = [parse_config(text) for text in ("", VOLUME_CONFIG, SWARM_CONFIG, VOLUME_CONFIG + SWARM_CONFIG)]
    names = ["NVIDIA_VISIBLE_DEVICES", "CUDA_VERSION", "NVIDIA_REQUIRE_CUDA", "DOCKER_RESOURCE_GPU",
             "NVIDIA_DRIVER_CAPABILITIES", "OTHER"]
    values = ["0", "all", "none", "void", "", "11.0", "1,2", "GPU-1234"]
    gpu_seen = 0
    for _ in range(3000):
        env = [f"{rng.choice(names)}={rng.choice(values)}" for _ in range(rng.randrange(4))]
        mounts = [dict(DEVICE_MOUNT, destination=rng.choice(
            ["/var/run/nvidia-container-devices/0", "/var/run/nvidia-container-devices/all", "/other"]))
            for _ in range(rng.randrange(2))]
        doc = spec(env, mounts=mounts)
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1]))
        if rng.random() < 0.3:
            text = text.replace("/", "\\/")
        if rng.random() < 0.3:  # escape a random letter of every string the way a JSON writer may
            letter = rng.choice("NVIDACUSOR_")
            text = text.replace(letter, f"\\u{ord(letter):04x}")
        data = text.encode(rng.choice(["utf-8", "utf-8", "utf-16", "utf-32"]))
        for config in configs:
            try:
                gpu = gpu_request_from_spec(json.loads(data), config)
            except NvcError:  # a refused spec is not a GPU container either
                gpu = None
            if gpu is not None:
                gpu_seen += 1
                assert prefilter.may_request_gpu(data, prefilter_memo.markers_for(config)), data[:300]
    assert gpu_seen > 1000


def test_marker_prefixes_survive_json_escaping():
    config = parse_config('swarm-resource = "MY_GPU, ODD\\"NAME"\n'
                          '[nvidia-container-runtime.modes.cdi]\nannotation-prefixes = ["cdi.k8s.io/", "x/y"]\n')
    markers = prefilter_memo.markers_for(config)
    assert {"MY_GPU", "ODD", "cdi.k8s.io", "x"} <= set(markers)
    assert "\0" in markers and "\\u" in markers


WORDS = ["create", "run", "delete", "--root", "/r", "-b", "--bundle", "-bundle", "--b", "B1", "B2", "--", "id",
         "--pid-file", "--bundle=B1", "-b=B2", "--bundle=", "--log", "--systemd-cgroup", "-h", "B1/../B2"]


def test_random_argv_never_skips_the_bundle_python_would_read(lab):
    """argv from runc's grammar and its corners: wherever Python's find_command/find_bundle would read a GPU
    config.json, the fast path hands the call to Python."""
    lab.remember()
    rng = random.Random(7)
    cwd = lab.tmp / "cwd"
    cwd.mkdir()
    gpu = json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=0"])).encode()
    clean = json.dumps(spec()).encode()
    corners = [  # (argv, GPU bundles): each has Python read a GPU config.json
        (["create", "--", "-b", "B1", "id"], {"."}),
        (["-b", "run", "create", "id"], {"."}),
        (["--root", "-b", "create", "id"], {"."}),
        (["create", "-b"], {"."}),
        (["create", "--bundle=", "id"], {"."}),
        (["create", "-b", "-b", "B1"], set()),  # Python's bundle is "-b": missing, so Python reports it
        (["run", "-b", "B1", "create", "id"], {"B1"}),
        (["create", "---bundle=B2", "id"], {"B2"}),
        (["--log", "run", "create", "--bundle", "B1"], {"B1"}),
        (["--systemd-cgroup", "run", "-b", "B1/../B2", "id"], {"B2"}),
    ]
    cases = [(argv, {name: name in gpus for name in ("B1", "B2", ".")}) for argv, gpus in corners]
    for _ in range(250):
        argv = [rng.choice(WORDS) for _ in range(rng.randrange(1, 7))]
        if not {"create", "run"} & set(argv):
            argv.insert(rng.randrange(len(argv) + 1), rng.choice(["create", "run"]))
        cases.append((argv, {"B1": rng.random() < 0.5, "B2": rng.random() < 0.5, ".": rng.random() < 0.5}))
    for word in ("create", "run", "id"):  # words that are also clean bundles make the corners sharper
        bundle(cwd / word, clean)
    checked = 0
    for argv, layout in cases:
        for name, is_gpu in layout.items():
            bundle(cwd / name, gpu if is_gpu else clean)
        index = find_command(argv)
        command = argv[index] if index is not None and index < len(argv) else None
        true_bundle = find_bundle(argv, index, str(cwd)) if command in ("create", "run") else None
        went = lab(*argv, cwd=cwd)
        if true_bundle is not None and os.path.isfile(os.path.join(true_bundle, "config.json")):
            with open(os.path.join(true_bundle, "config.json"), "rb") as handle:
                if handle.read() == gpu:
                    checked += 1
                    assert went == "PYTHON", (argv, layout)
    assert checked > 40


def test_memo_is_refused_when_anything_it_depends_on_changed(lab, tmp_path):
    b = bundle(tmp_path / "b", CLEAN_VARIANTS["plain"])
    assert lab("delete", "id") == "PYTHON"  # no memo yet
    lab.remember()
    assert lab("delete", "id") == "RUNTIME"
    assert lab("create", "-b", str(b), "id") == "RUNTIME"
    assert lab("delete", "id", env={"NVC_NO_CACHE": "1"}) == "PYTHON"
    assert lab("delete", "id", env={"NVC_CACHE_DIR": "cache"}) == "PYTHON"  # the same directory, but relative
    assert lab("delete", "id", env={"PATH": lab.env["PATH"] + ":/sbin"}) == "PYTHON"
    assert lab("delete", "id", env={"XDG_CONFIG_HOME": "/etc"}) == "PYTHON"
    # an earlier candidate appears: the Python shim would pick it
    earlier = lab.rtdir / "missing-runtime"
    earlier.write_text("#!/bin/sh\n")
    earlier.chmod(0o755)
    assert lab("delete", "id") == "PYTHON"
    earlier.unlink()
    assert lab("delete", "id") == "RUNTIME"
    # the config changes (a new mtime): whatever it says now is Python's to read
    lab.config.write_text('[nvidia-container-runtime]\nruntimes = ["runc"]\n')
    assert lab("delete", "id") == "PYTHON"
    lab.remember()
    assert lab("delete", "id") == "RUNTIME"
    st = lab.config.stat()
    os.utime(lab.config, ns=(st.st_atime_ns, st.st_mtime_ns - 1))
    assert lab("delete", "id") == "PYTHON"
    lab.remember()
    # the runtime goes away
    lab.runtime.chmod(0o644)
    assert lab("delete", "id") == "PYTHON"
    lab.runtime.chmod(0o755)
    assert lab("delete", "id") == "RUNTIME"
    # the marker file goes away: create/run go to Python, other commands do not need it
    for pattern in lab.cache.glob("runtime-shim-markers-*"):
        pattern.unlink()
    assert lab("create", "-b", str(b), "id") == "PYTHON"
    assert lab("delete", "id") == "RUNTIME"
    # a memo that is a symlink, or not ours, or garbage
    memo = lab.cache / prefilter.SHIM_MEMO
    real = tmp_path / "memo-elsewhere"
    shutil.copy2(memo, real)
    memo.unlink()
    memo.symlink_to(real)
    assert lab("delete", "id") == "PYTHON"
    memo.unlink()
    lab.remember()
    os.chown(memo, 65534, 65534)
    assert lab("delete", "id") == "PYTHON"
    memo.unlink()
    lab.remember()
    text = memo.read_text()
    st = memo.stat()
    memo.write_text(text.replace("\nend\n", "\n"))  # cut short
    os.utime(memo, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lab("delete", "id") == "PYTHON"
    memo.write_text(text.replace("runtime ", "runtime-x "))
    os.utime(memo, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lab("delete", "id") == "PYTHON"


def test_no_memo_when_the_decision_depends_on_more(lab, monkeypatch):
    memo = lab.cache / prefilter.SHIM_MEMO
    lab.env["PATH"] = "relative/bin:" + lab.env["PATH"]  # the working directory would matter
    lab.remember()
    assert not memo.exists()
    lab.env["PATH"] = lab.env["PATH"].removeprefix("relative/bin:")
    lab.config.write_text('[nvidia-container-runtime]\nruntimes = ["runc"]\ndebug = "/tmp/x.log"\n')
    lab.remember()  # a debug log must see every call
    assert not memo.exists()
    lab.config.write_text(f'[nvidia-container-runtime]\nruntimes = ["{lab.launcher}", "runc"]\n')
    lab.remember()  # the shim itself comes first: Python skips it, sh could not tell
    assert not memo.exists()
    monkeypatch.setattr(prefilter, "SETTLE_NS", 10**12)
    lab.config.write_text('[nvidia-container-runtime]\nruntimes = ["runc"]\n')
    lab.remember()  # just changed: a second change within the same timestamp tick would go unseen
    assert not memo.exists()


def test_absent_config_is_remembered_as_absent(lab):
    lab.config.unlink()
    lab.env.pop("NVIDIA_CTK_CONFIG_FILE_PATH")
    lab.env["XDG_CONFIG_HOME"] = str(lab.tmp / "xdg")
    lab.env["PATH"] = f"{lab.rtdir}:/usr/bin:/bin"
    lab.remember()
    assert "\nabsent\n" in (lab.cache / prefilter.SHIM_MEMO).read_text()
    assert lab("delete", "id") == "RUNTIME"
    (lab.tmp / "xdg/nvidia-container-runtime").mkdir(parents=True)
    (lab.tmp / "xdg/nvidia-container-runtime/config.toml").write_text("")
    assert lab("delete", "id") == "PYTHON"


@pytest.mark.parametrize("text", ["", '[nvidia-container-runtime]\nruntimes = ["crun", "/usr/bin/runc"]\n',
                                  '[nvidia-container-runtime]\nmode = "legacy"\n',
                                  '[nvidia-container-runtime]\nruntimes = ["a"]\n[nvidia-container-cli]\nroot = "/"\n'])
def test_create_and_passthrough_read_the_same_runtimes(tmp_path, text):
    """The memo is written from the create path's config; the Python pass-through reads only the list: they agree
    on every config create accepts."""
    config = tmp_path / "config.toml"
    config.write_text(text)
    env = {"NVIDIA_CTK_CONFIG_FILE_PATH": str(config)}
    assert load_config(None, env).runtime.runtimes == passthrough_runtimes(env)


def test_the_real_shim_writes_the_memo_and_the_launcher_uses_it(tmp_path):
    """End to end with the real Python shim behind the launcher (nvc importable through PYTHONPATH)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvc").write_text(f"#!{sys.executable}\n")
    launcher = bindir / "nvidia-container-runtime"
    shutil.copy2(LAUNCHER, launcher)
    runtime = tmp_path / "rt" / "runc"
    runtime.parent.mkdir()
    runtime.write_text(RECORDER.format(tag="RUNTIME"))
    runtime.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text('[nvidia-container-runtime]\nruntimes = ["runc"]\n')
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns - 10**10, st.st_mtime_ns - 10**10))
    log = tmp_path / "log"
    env = {"PATH": f"{runtime.parent}:/usr/bin:/bin", "NVC_CACHE_DIR": str(tmp_path / "cache"),
           "NVIDIA_CTK_CONFIG_FILE_PATH": str(config), "FASTPATH_LOG": str(log), "PYTHONPATH": str(REPO),
           "NVC_LAUNCHER_TRACE": "1"}
    b = bundle(tmp_path / "b", CLEAN_VARIANTS["plain"])
    import time

    time.sleep(prefilter.SETTLE_NS / 1e9 + 0.1)  # ctime cannot be set back: let the config settle

    def call(*args):
        res = subprocess.run([str(launcher), *args], env=env, capture_output=True, text=True, timeout=60,
                             check=False)
        assert res.returncode == 0, res.stderr
        return "nvc-launcher:" in res.stderr

    assert call("create", "--bundle", str(b), "id")  # Python decided, and wrote the memo
    assert (tmp_path / "cache" / prefilter.SHIM_MEMO).exists()
    assert not call("delete", "id")
    assert not call("create", "--bundle", str(b), "id")
    gpu = bundle(tmp_path / "g", json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=void"])).encode())
    assert call("create", "--bundle", str(gpu), "id")
    assert log.read_text().splitlines() == [f"RUNTIME create --bundle {b} id", "RUNTIME delete id",
                                            f"RUNTIME create --bundle {b} id", f"RUNTIME create --bundle {gpu} id"]


@pytest.mark.parametrize("xdg", ["", "/x", "/x/", "rel", "/", "//a//", "a/b/"])
def test_config_location_joins_as_os_path_join(xdg):
    from nvc.config_location import RELATIVE_CONFIG_PATH, config_file_path

    assert config_file_path({"XDG_CONFIG_HOME": xdg}) == (os.path.join(xdg or "/etc", RELATIVE_CONFIG_PATH), False)


@pytest.mark.parametrize("exe", ["/usr/bin/python3", "/bin/python", "/python", "/opt/venv/bin/python3.11"])
def test_launcher_finds_pyvenv_cfg_as_os_path_does(exe):
    """The launchers compute the prefix with string operations (no os): the same answer as os.path."""
    bindir = exe.rsplit("/", 1)[0]
    cfg = (bindir.rsplit("/", 1)[0] or "") + "/pyvenv.cfg"
    assert cfg == os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(exe))), "pyvenv.cfg")
    assert (cfg.rsplit("/", 1)[0] or "/") == os.path.dirname(cfg)
    text = LAUNCHER.read_text()
    assert '_bindir = _exe.rsplit("/", 1)[0]' in text
    assert '_cfg = (_bindir.rsplit("/", 1)[0] or "") + "/pyvenv.cfg"' in text
