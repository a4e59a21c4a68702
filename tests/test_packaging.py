"""The Debian package's inputs agree with the code they describe (fast; tests/test_deb.py installs the package).

config.toml ships NVIDIA's defaults commented out: it must load to exactly the built-in defaults, uncommenting a
``#key = value`` line must change nothing, and every key the parser knows must be there. The package's version,
its versioned Provides and its pinned wheels follow pyproject.toml and nvc.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

from nvc import CLI_COMPAT_VERSION
from nvc.record import fields, is_record
from nvc.request.runtime_config import _NOT_IN_FILE, _TOML_KEYS, RuntimeConfig, default_config, parse_config, replace

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "hooks/config.toml"


def _known_keys(cls: type = RuntimeConfig, prefix: str = "") -> set[str]:
    keys = set()
    defaults = cls()
    for item in fields(cls):
        if (cls, item.name) in _NOT_IN_FILE:
            continue
        key = prefix + _TOML_KEYS.get((cls, item.name), item.name.replace("_", "-"))
        value = getattr(defaults, item.name)
        keys |= _known_keys(type(value), key + ".") if is_record(value) else {key}
    return keys


def _dotted(table: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        keys |= _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_config_toml_is_the_defaults_commented_out():
    text = CONFIG.read_text()
    defaults = default_config(lambda _path: False)
    assert replace(parse_config(text, path_exists=lambda _p: False), source=None) == defaults
    assert tomllib.loads(text) == {k: v for k, v in tomllib.loads(text).items() if isinstance(v, dict)}  # no key set
    uncommented = re.sub(r"(?m)^#(?=[a-z][a-z0-9-]* = )", "", text)
    assert uncommented != text
    assert replace(parse_config(uncommented, path_exists=lambda _p: False), source=None) == defaults
    # Every key nvc reads is in the file, as a commented default or as an example.
    examples = re.sub(r"(?m)^# e\.g\. (?=[a-z][a-z0-9-]* = )", "", text)
    assert _dotted(tomllib.loads(uncommented)) | _dotted(tomllib.loads(examples)) == _known_keys()


def test_package_version_provides_and_hook_file():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    version = re.match(r"nvc \(([^)]+)\) ", first).group(1)
    assert version.rsplit("-", 1)[0] == project["version"]
    control = (REPO / "debian/control").read_text()
    provides = re.search(r"(?ms)^Provides: (.*?)\n(?=\S)", control).group(1)
    assert re.findall(r"\(= ([^)]+)\)", provides) == [CLI_COMPAT_VERSION] * 2
    hook = json.loads((REPO / "hooks/oci-nvidia-hook.json").read_text())["hook"]
    assert (REPO / "scripts/launchers" / Path(hook["path"]).name).is_file()  # stage-tree.sh points it at /usr/bin


def test_pinned_wheels_cover_the_dependencies():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (REPO / "debian/requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            spec, _, digest = line.partition(" --hash=sha256:")
            name, _, pinned = spec.partition("==")
            assert re.fullmatch(r"[0-9a-f]{64}", digest), line
            pins[name.lower()] = pinned
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        assert requirement.name.lower() in pins, requirement.name
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (requirement, pins)


def test_launchers_sh_part_parses(tmp_path):
    """What sh reads of each launcher (up to the line that closes its quote) is valid sh, as dash parses it: lintian
    cannot check a polyglot whole (debian/nvc.lintian-overrides)."""
    for launcher in sorted((REPO / "scripts/launchers").iterdir()):
        lines = launcher.read_text().splitlines(keepends=True)
        end = lines.index("'''\n")
        assert "exec " in lines[end - 1], launcher.name  # sh never goes past this line
        part = tmp_path / launcher.name
        part.write_text("".join(lines[:end]))
        res = subprocess.run(["sh", "-n", str(part)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, (launcher.name, res.stderr)
