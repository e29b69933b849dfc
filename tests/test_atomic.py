"""Atomic writes: a failed or killed writer leaves the old file or none, and its temp file is swept later."""

import subprocess
import sys
import time

import pytest

from levo_batch.atomic import atomic_write, atomic_write_bytes, sweep_temp_files


def temps(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_bytes_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "x.bin"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert temps(target.parent) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_target_untouched(tmp_path, exc):
    target = tmp_path / "x.bin"

    def crash(f):
        f.write(b"partial garbage")
        raise exc("disk on fire")

    with pytest.raises(exc):
        atomic_write(target, crash)
    assert not target.exists()
    atomic_write_bytes(target, b"old")
    with pytest.raises(exc):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_sweep_keeps_temp_files_of_live_writers(tmp_path):
    import os

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".x.npz.{dead.pid}.0a1b.tmp").write_bytes(b"")
    (tmp_path / f".y.npz.{os.getpid()}.0a1b.tmp").write_bytes(b"")
    (tmp_path / "keep.npz").write_bytes(b"")
    assert sweep_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".y.npz.{os.getpid()}.0a1b.tmp", "keep.npz"]


def test_sweep_judges_other_hosts_temp_files_by_age_never_by_a_local_pid(tmp_path):
    """Shards on other machines share SAVE_DIR: their PIDs mean nothing here, so only old files go."""
    import os
    from levo_batch import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_bytes(tmp_path / "mine.npz", b"x")
    other_host = "ffffffff" if not atomic._HOST_TAG.startswith("f") else "00000000"
    in_flight = tmp_path / f".a.npz.{dead.pid}.{other_host}0a1b2c3d.tmp"
    abandoned = tmp_path / f".b.npz.{dead.pid}.{other_host}0a1b2c3e.tmp"
    local_dead = tmp_path / f".c.npz.{dead.pid}.{atomic._HOST_TAG}0a1b2c3f.tmp"
    for path in (in_flight, abandoned, local_dead):
        path.write_bytes(b"")
    old = time.time() - atomic._FOREIGN_TEMP_AGE_S - 60
    os.utime(abandoned, (old, old))
    assert sweep_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [in_flight.name, "mine.npz"]
