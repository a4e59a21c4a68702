"""fixtures.host_residue: the "an engine left nothing on the host" check of the podman and docker labs.

It must pass on a fresh machine where the engine creates its one fixed file (podman's blob-info cache) and on a used
machine where the watched directories already exist, and it must still see anything else a run leaves: a new file
inside a directory that existed before, a new directory, a new file next to the tolerated one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.host_residue import HostResidue, paths_under


def _watched(tmp_path: Path) -> tuple[str, str, str]:
    """(a watched dir that does not exist yet, the tolerated file in it, a watched dir that exists)."""
    fresh = tmp_path / "var-lib-containers"
    used = tmp_path / "run-docker"
    used.mkdir()
    (used / "old").write_text("from an earlier run\n")
    return str(fresh), str(fresh / "cache" / "blob-info-cache-v1.boltdb"), str(used)


def test_fresh_machine_tolerated_file_is_removed_with_its_dirs(tmp_path):
    fresh, blob, used = _watched(tmp_path)
    residue = HostResidue.take([fresh, used], tolerated=[blob])
    Path(blob).parent.mkdir(parents=True)
    Path(blob).write_bytes(b"bolt")
    assert residue.settle() == []
    assert not Path(fresh).exists()  # as before the run: the engine's fixed file and its dirs are gone
    assert (Path(used) / "old").exists()


def test_used_machine_tolerated_file_that_was_there_is_kept(tmp_path):
    fresh, blob, used = _watched(tmp_path)
    Path(blob).parent.mkdir(parents=True)
    Path(blob).write_bytes(b"someone's cache")
    residue = HostResidue.take([fresh, used], tolerated=[blob])
    Path(blob).write_bytes(b"rewritten by the run")
    assert residue.settle() == []
    assert Path(blob).read_bytes() == b"rewritten by the run"  # not ours to remove


def test_leak_inside_an_existing_dir_is_reported(tmp_path):
    """The old check ("did the path exist before") passes this on a used machine."""
    fresh, blob, used = _watched(tmp_path)
    residue = HostResidue.take([fresh, used], tolerated=[blob])
    (Path(used) / "leaked.sock").write_text("")
    (Path(used) / "netns" / "x").mkdir(parents=True)
    assert residue.settle() == [f"created {used}/leaked.sock", f"created {used}/netns"]


def test_other_file_beside_the_tolerated_one_is_reported_and_its_dir_kept(tmp_path):
    fresh, blob, used = _watched(tmp_path)
    residue = HostResidue.take([fresh, used], tolerated=[blob])
    storage = Path(fresh) / "storage" / "vfs"
    storage.mkdir(parents=True)
    Path(blob).parent.mkdir(parents=True)
    Path(blob).write_bytes(b"bolt")
    assert residue.settle() == [f"created {fresh}"]
    assert not Path(blob).exists() and storage.is_dir()


def test_new_watched_file_and_symlinks_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a").write_text("")
    lock = tmp_path / "cni.lock"
    link = tmp_path / "watched-link"
    link.symlink_to(outside)
    residue = HostResidue.take([str(lock), str(link)])
    assert paths_under(str(link)) == {str(link)}
    lock.write_text("")
    (outside / "b").write_text("")  # behind a symlink: not a watched path
    assert residue.settle() == [f"created {lock}"]


def test_tolerated_paths_must_be_watched(tmp_path):
    with pytest.raises(ValueError, match="tolerated"):
        HostResidue.take([str(tmp_path / "a")], tolerated=[str(tmp_path / "ab" / "file")])


def test_tolerated_directory_goes_only_when_empty(tmp_path):
    run = tmp_path / "run-containerd"
    shim_dir = run / "s"
    residue = HostResidue.take([str(run)], tolerated=[str(shim_dir)])
    shim_dir.mkdir(parents=True)
    assert residue.settle() == [] and not run.exists()
    residue = HostResidue.take([str(run)], tolerated=[str(shim_dir)])
    shim_dir.mkdir(parents=True)
    (shim_dir / "0123abcd").write_text("")  # a shim's socket left behind
    assert residue.settle() == [f"created {run}"]
