"""Malformed input to the hook ends in its stage's one line, never a Python exception (issue 16).

The hook parses three inputs on every container start: config.toml, the container state on stdin and the bundle's
config.json. Each is fuzzed here through the same function the hook runs (:func:`nvc.commands.hook.prepare_hook`, which
reads and decides without acting): deep nesting (``[`` repeated up to 50 MB), every truncation of a valid input,
seeded random bytes, every field replaced by values of every JSON/TOML type, huge inputs. The only acceptable
outcomes are a decision or an ``NvcError`` of stage ``input`` whose line says which input was bad
(``failed to decode container state: ...``, ``failed to decode OCI spec: ...``, ``config.toml: ...``), on one
line, naming no Python exception. A few cases also run through the real entry point, for the exit status and the
exact stderr. Every loop runs under a time bound: a hostile input must fail fast, not hang a container start.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nvc.commands.hook import prepare_hook
from nvc.errors import NvcError
from nvc.request.runtime_config import RuntimeConfig, load_config, parse_config, schema_leaves
from tests.test_runtime_config import NVIDIA_SHIPPED_CONFIG

REPO = Path(__file__).resolve().parent.parent
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b|Traceback")
HUGE = 50 * 1024 * 1024  # the 50 MB of "["
SEED = 16


def _no_real(path: str) -> bool:
    return False


def assert_input_error(exc: NvcError, prefix: str) -> None:
    text = str(exc)
    assert exc.stage == "input", text
    assert exc.message.startswith(prefix), text
    assert "\n" not in text and text.isprintable(), repr(text)
    assert not EXCEPTION_NAME.search(text), text


class Bounded:
    """A time bound over a loop of cases: a case that makes the parser crawl fails the test."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds

    def check(self, case: object) -> None:
        assert time.monotonic() < self.deadline, f"over {self.seconds} s, at case {case!r:.200}"


# --- generators --------------------------------------------------------------------------------------------------

SCALARS = [None, True, False, 0, -1, 1, 2**64, 10**30, 1.5, -0.0, 1e308, "", "x", "0", "all", "void",
           "a\x00b", "line\nbreak", "é", "\u2028", "/", "../../etc", "=", "A=B"]


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.6:
        return rng.choice(SCALARS)
    if roll < 0.8:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["path", "env", "bounding", "source", "destination", "x"]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, value: object) -> object:
    """``value`` with one node, chosen at random at any depth, replaced by a random value."""
    if isinstance(value, dict) and value and rng.random() < 0.75:
        key = rng.choice(list(value))
        return {**value, key: mutate(rng, value[key])}
    if isinstance(value, list) and value and rng.random() < 0.75:
        index = rng.randrange(len(value))
        return [*value[:index], mutate(rng, value[index]), *value[index + 1:]]
    return random_value(rng)


def nested(depth: int, opener: str = "[", closer: str = "]", inner: str = "0") -> str:
    return opener * depth + inner + closer * depth


# --- the container state on stdin ----------------------------------------------------------------------------------


@pytest.fixture
def gpu_bundle(tmp_path):
    """A config.toml (defaults) and a bundle whose spec asks for GPU 0."""
    config = tmp_path / "config.toml"
    config.write_text("")
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": [],
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=0"], "capabilities": {"bounding": ["CAP_CHOWN"]}}}
    (bundle / "config.json").write_text(json.dumps(spec))
    return config, bundle, spec


def decide_state(config: Path, data: bytes):
    return prepare_hook(str(config), False, io.BytesIO(data), {})


STATE_PREFIXES = ("failed to decode container state: ", "container state has no valid pid",
                  "failed to read OCI spec: ")


def _state_cases(bundle: Path) -> list[bytes]:
    valid = json.dumps({"ociVersion": "1.0.2", "id": "c", "status": "creating", "pid": os.getpid(),
                        "bundle": str(bundle)}).encode()
    rng = random.Random(SEED)
    cases = [b"", b" ", b"null", b"[]", b"0", b'"s"', b"{", b"}", b"\xff\xfe", b"\xef\xbb\xbf{}", b"\x00" * 8,
             valid + b"x", valid + b"{}", valid.decode().encode("utf-16"), b"{" * 100_000, b"[" * 100_000,
             nested(100_000, '{"a":', "}").encode(), b'{"pid": 1e999, "bundle": "/"}',
             b'{"pid": ' + b"9" * 5000 + b"}", b'{"pid": NaN}', b'{"pid": "42"}', b'{"pid": true}',
             b'{"pid": -1}', b'{"pid": 0}', b'{"pid": 4.2}']
    cases += [valid[:i] for i in range(len(valid))]  # every truncation
    cases += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(300)]
    state = json.loads(valid)
    for key in ("pid", "bundle", "bundlePath", "root"):
        for value in [*SCALARS, [], {}, [1], {"a": 1}]:
            if key == "bundle" and value in ("", None):
                continue  # these fall back to bundlePath / the working directory: valid, not malformed
            cases.append(json.dumps({**state, key: value}).encode())
    return cases


def test_state_fuzz(gpu_bundle):
    config, bundle, _ = gpu_bundle
    bound = Bounded(60)
    outcomes = {"decided": 0, "refused": 0}
    for data in _state_cases(bundle):
        try:
            decide_state(config, data)
            outcomes["decided"] += 1
        except NvcError as exc:
            assert_input_error(exc, STATE_PREFIXES)
            outcomes["refused"] += 1
        bound.check(data)
    assert outcomes["decided"] and outcomes["refused"] > 300


def test_state_nesting_message(gpu_bundle):
    config, _, _ = gpu_bundle
    with pytest.raises(NvcError) as caught:
        decide_state(config, b"[" * HUGE)
    assert caught.value.message == "failed to decode container state: nested too deeply"


# --- config.json ---------------------------------------------------------------------------------------------------

SPEC_PREFIXES = ("failed to decode OCI spec: ", "could not decode", "invalid environment variable: ",
                 "OCI spec has no root.path", "OCI spec root.path contains a NUL byte",
                 "unsupported capabilities found in ", "cannot set MIG_", "failed to get requirements: ",
                 "invalid argument for nvidia-container-cli", "invoking the NVIDIA")


def decide_spec(config: Path, bundle: Path, spec_bytes: bytes):
    (bundle / "config.json").write_bytes(spec_bytes)
    state = json.dumps({"pid": os.getpid(), "bundle": str(bundle)}).encode()
    return prepare_hook(str(config), False, io.BytesIO(state), {})


def test_spec_fuzz(gpu_bundle):
    config, bundle, spec = gpu_bundle
    valid = json.dumps(spec).encode()
    rng = random.Random(SEED)
    rich = {**spec, "process": {**spec["process"],
                                "env": [*spec["process"]["env"], "NVIDIA_DRIVER_CAPABILITIES=compute",
                                        "NVIDIA_REQUIRE_CUDA=cuda>=12", "CUDA_VERSION=12.0", "NVIDIA_IMEX_CHANNELS=0",
                                        "NVIDIA_MIG_CONFIG_DEVICES=", "DOCKER_RESOURCE_GPU=1"]},
            "mounts": [{"source": "/dev/null", "destination": "/var/run/nvidia-container-devices/1"}]}
    cases = [b"", b"[]", b"{}", b"\xff", b"{" * 100_000, b"[" * 100_000, valid + b"]"]
    cases += [valid[:i] for i in range(len(valid))]
    cases += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(200)]
    cases += [json.dumps(mutate(rng, rich)).encode() for _ in range(1500)]
    bound = Bounded(90)
    outcomes = {"decided": 0, "not a GPU container": 0, "refused": 0}
    for data in cases:
        try:
            _, _, invocation = decide_spec(config, bundle, data)
            outcomes["decided" if invocation is not None else "not a GPU container"] += 1
        except NvcError as exc:
            assert_input_error(exc, SPEC_PREFIXES)
            outcomes["refused"] += 1
        bound.check(data)
    assert all(outcomes.values()), outcomes  # the generator reaches every outcome


def test_spec_huge_environment_is_fast(gpu_bundle):
    config, bundle, spec = gpu_bundle
    env = [f"VAR_{i}={'x' * 100}" for i in range(200_000)] + ["NVIDIA_VISIBLE_DEVICES=1"]
    data = json.dumps({**spec, "process": {**spec["process"], "env": env}}).encode()  # ~23 MB
    start = time.monotonic()
    _, _, invocation = decide_spec(config, bundle, data)
    assert invocation.request.devices == ("1",)
    assert time.monotonic() - start < 20


# --- config.toml ---------------------------------------------------------------------------------------------------

TOML_VALUES = ["1", "-1", "1.5", "inf", "nan", "true", '"s"', '""', '"\\u0000"', '"a\\nb"', "[]", "[1]", '["s"]',
               '[[1]]', "{a = 1}", "{}", "1979-05-27T07:32:00Z", "07:32:00", "1979-05-27"]


def _key_line(key: str, value: str) -> str:
    *table, name = key.split(".")
    return (f"[{'.'.join(table)}]\n" if table else "") + f"{name} = {value}\n"


def _toml_cases() -> list[str]:
    rng = random.Random(SEED)
    cases = [NVIDIA_SHIPPED_CONFIG[:i] for i in range(len(NVIDIA_SHIPPED_CONFIG))]  # every truncation
    cases += [_key_line(key, value) for key, _ in schema_leaves() for value in TOML_VALUES]  # every type, every key
    cases += [f"{table} = {value}\n" for table in ("nvidia-container-cli", "nvidia-container-runtime", "features",
                                                   "nvidia-container-runtime-hook", "nvidia-ctk")
              for value in TOML_VALUES]  # a table given as a value
    cases += ["a = " + nested(100_000), "a = " + nested(100_000, "{b = ", "}"), "[" * 100_000,
              "a." * 50_000 + "b = 1", "[" + "a." * 50_000 + "b]", "\x00", "\ufeffa = 1", "a = '''"]
    for _ in range(300):  # random printable noise and fragments of TOML syntax
        alphabet = "[]{}=.,\"'#\n -_abcdeflnrstu0123456789"
        cases.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 80))))
    return cases


def test_config_toml_fuzz():
    bound = Bounded(60)
    outcomes = {"loaded": 0, "refused": 0}
    for text in _toml_cases():
        try:
            assert isinstance(parse_config(text, "config.toml", path_exists=_no_real), RuntimeConfig)
            outcomes["loaded"] += 1
        except NvcError as exc:
            assert_input_error(exc, "config.toml: ")
            outcomes["refused"] += 1
        bound.check(text)
    assert outcomes["loaded"] > 100 and outcomes["refused"] > 500, outcomes


def test_config_toml_bytes_fuzz(tmp_path):
    """Through the file: not UTF-8, NULs, and the huge inputs."""
    path = tmp_path / "config.toml"
    rng = random.Random(SEED)
    cases = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(200)]
    cases += [b"[" * HUGE, b"# " + b"x" * (5 * 1024 * 1024) + b"\n", NVIDIA_SHIPPED_CONFIG.encode() + b"\xff"]
    bound = Bounded(60)
    for data in cases:
        path.write_bytes(data)
        try:
            load_config(str(path), {"NVC_NO_CACHE": "1"}, path_exists=_no_real)
        except NvcError as exc:
            assert_input_error(exc, f"{path}: ")
        bound.check(data[:64])


def test_config_toml_nesting_message():
    with pytest.raises(NvcError) as caught:
        parse_config("a = " + nested(100_000), "config.toml", path_exists=_no_real)
    assert caught.value.message == "config.toml: invalid TOML: arrays or tables nested too deeply"


# --- through the real entry point -----------------------------------------------------------------------------------


def _hook(args: list[str], stdin: bytes, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvc.commands.hook", *args], input=stdin, capture_output=True,
                          env={**env, "PYTHONPATH": str(REPO), "NVC_NO_CACHE": "1"}, timeout=60, check=False)


@pytest.mark.parametrize("which", ["state", "config.json", "config.toml"])
def test_fifty_megabytes_of_brackets(tmp_path, gpu_bundle, which):
    """The issue's report: 50 MB of "[" gave `error: RecursionError: ...`; each input now gets its own line."""
    config, bundle, _ = gpu_bundle
    state = json.dumps({"pid": os.getpid(), "bundle": str(bundle)}).encode()
    if which == "state":
        state = b"[" * HUGE
        expected = "input error: failed to decode container state: nested too deeply"
    elif which == "config.json":
        (bundle / "config.json").write_bytes(b"[" * HUGE)
        expected = f"input error: failed to decode OCI spec: {bundle}/config.json: nested too deeply"
    else:
        config.write_bytes(b"a = " + b"[" * HUGE)
        expected = f"input error: {config}: invalid TOML: arrays or tables nested too deeply"
    start = time.monotonic()
    res = _hook([f"-config={config}", "prestart"], state, {"PATH": "/usr/bin:/bin"})
    assert time.monotonic() - start < 30
    assert (res.returncode, res.stdout) == (1, b"")
    assert res.stderr.decode() == f"nvidia-container-runtime-hook: {expected}\n"


@pytest.mark.parametrize(
    ("stdin", "message"),
    [(b"\xff\xfe\x00garbage", "failed to decode container state: "),
     (b'{"pid": 1, "bundle": "/nonexistent\\nwith newline"}', "failed to read OCI spec: "),
     (b'{"pid": 1, "bundle": "/x\\u0000y"}', "failed to decode container state: bundle path contains a NUL byte"),
     (b'{"pid": 1, "bu', "failed to decode container state: ")],
    ids=["random-bytes", "newline-in-bundle", "nul-in-bundle", "truncated"],
)
def test_real_entry_point_one_line(tmp_path, stdin, message):
    config = tmp_path / "config.toml"
    config.write_text("")
    res = _hook([f"-config={config}", "prestart"], stdin, {"PATH": "/usr/bin:/bin"})
    err = res.stderr.decode()
    assert res.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith(f"nvidia-container-runtime-hook: input error: {message}"), err
    assert not EXCEPTION_NAME.search(err), err


def test_real_entry_point_newline_in_container_value(gpu_bundle):
    config, bundle, spec = gpu_bundle
    spec["process"]["env"].append("BROKEN\nLINE")
    (bundle / "config.json").write_text(json.dumps(spec))
    res = _hook([f"-config={config}", "prestart"], json.dumps({"pid": 1, "bundle": str(bundle)}).encode(),
                {"PATH": "/usr/bin:/bin"})
    assert res.returncode == 1
    assert res.stderr.decode() == "nvidia-container-runtime-hook: input error: invalid environment variable: " \
                                  "BROKEN\\nLINE\n"
