"""Issue 10, items 3 and 4: a full disk, a read-only or unusable SAVE_DIR give one clear error, exit 2, the lock
released and nothing corrupt; a full disk stops the run at once. Uses small tmpfs mounts (root only)."""

from __future__ import annotations

import subprocess

import pytest

from fakes import FakeStages
from levo_batch.errors import StorageError
from levo_batch.lock import LOCK_NAME
from levo_batch.pipeline import RunOptions, run
from levo_batch.preflight import PreflightError
from test_pipeline import jobs_file  # noqa: F401 (fixture)


@pytest.fixture
def tmpfs(tmp_path):
    """`mount(size, read_only)` -> a fresh tmpfs folder, unmounted after the test."""
    mounted = []

    def mount(size: str, read_only: bool = False):
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(target)
        (target / "out").mkdir()
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
        return target / "out"

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


def leftovers(save_dir):
    return sorted(p.name for p in save_dir.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_NAME)


def test_disk_full_during_an_lm_checkpoint_stops_with_one_clear_error(jobs_file, tmpfs):
    save_dir = tmpfs("4k")
    with pytest.raises(StorageError, match=r"cannot write .*tokens/.*\.partial\.npz: the disk is full\. "
                                           r"Everything finished so far is kept"):
        run(RunOptions(jobs_file, save_dir, tokens_only=True), FakeStages())
    assert leftovers(save_dir) == []


def test_disk_full_while_writing_audio_stops_the_run_at_once(jobs_file, tmpfs):
    """Item 4: every song used to be decoded, then decoded again one at a time, each write failing."""
    save_dir = tmpfs("24k")
    stages = FakeStages()
    with pytest.raises(StorageError, match=r"cannot write .*audios/a\.flac: the disk is full"):
        run(RunOptions(jobs_file, save_dir), stages)
    assert len(stages.decoder_obj.calls) == 1  # no song-by-song retry
    assert sorted(p.name for p in (save_dir / "tokens").iterdir()) == ["a.npz", "b.npz", "c.npz"]
    assert leftovers(save_dir) == []


def test_read_only_save_dir_is_refused_up_front(jobs_file, tmpfs):
    save_dir = tmpfs("1m", read_only=True)
    with pytest.raises(PreflightError, match=r"SAVE_DIR .* is not writable \(read-only file system\)"):
        run(RunOptions(jobs_file, save_dir), FakeStages())
    with pytest.raises(PreflightError, match=r"SAVE_DIR .*new cannot be created: .* is not writable "
                                             r"\(read-only file system\)"):
        run(RunOptions(jobs_file, save_dir / "new"), FakeStages())


def test_save_dir_below_a_file_is_refused_up_front(jobs_file, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match=r"cannot be created: .*file is a file, not a folder"):
        run(RunOptions(jobs_file, tmp_path / "file" / "out"), FakeStages())


def test_storage_errors_exit_2_with_the_lock_released(jobs_file, tmpfs, capsys, monkeypatch):
    from levo_batch import cli

    save_dir = tmpfs("4k")
    monkeypatch.setattr("levo_batch.stages.DefaultStages", lambda settings: FakeStages())
    assert cli.main(["generate", "ck", str(jobs_file), str(save_dir), "--tokens-only"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot write" in err and "the disk is full" in err and "Traceback" not in err
    assert not (save_dir / LOCK_NAME).exists()


class NotATensor:
    pass


def test_unsafe_model_pt_is_refused_in_one_line(tmp_path):
    """Item 3: torch's own message suggested `weights_only=False`."""
    import torch
    from lm_checkpoints import upstream_config
    import yaml

    from levo_batch.errors import LevoError
    from levo_batch.lm.loading import load_lm

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(upstream_config()))
    torch.save({"audiolm.x": NotATensor()}, tmp_path / "model.pt")
    with pytest.raises(LevoError, match=r"model\.pt holds more than plain tensors .* re-download") as e:
        load_lm(tmp_path)
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)


def test_full_disk_before_the_lock_is_written_exits_2(jobs_file, tmpfs, capsys, monkeypatch):
    from levo_batch import cli

    save_dir = tmpfs("4k")
    (save_dir / "filler").write_bytes(b"x" * 4096)
    monkeypatch.setattr("levo_batch.stages.DefaultStages", lambda settings: FakeStages())
    assert cli.main(["generate", "ck", str(jobs_file), str(save_dir), "--tokens-only"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {save_dir}: the disk is full" in err and "Traceback" not in err
    assert not (save_dir / LOCK_NAME).exists()


def test_permission_denied_while_writing_is_a_storage_error(tmp_path, monkeypatch):
    """EACCES cannot be produced by file modes when the tests run as root, so the OS call is made to fail."""
    import errno
    import os

    from levo_batch.atomic import atomic_write_bytes

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(StorageError, match=r"cannot write .*x\.bin: permission denied\. Everything finished"):
        atomic_write_bytes(tmp_path / "x.bin", b"data")


def test_save_dir_without_write_permission_is_refused_up_front(jobs_file, tmp_path, monkeypatch):
    monkeypatch.setattr("levo_batch.preflight._writable", lambda folder: False)
    (tmp_path / "out").mkdir()
    with pytest.raises(PreflightError, match=r"SAVE_DIR .*out is not writable \(permission denied\); fix its "
                                             r"permissions or choose another folder"):
        run(RunOptions(jobs_file, tmp_path / "out"), FakeStages())
