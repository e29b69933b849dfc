"""kill -9 of a real `levo-batch generate` (tiny MLX LM on CPU) at several points, then resume: the token files
must be identical to those of an uninterrupted run, and nothing half-written may remain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lm_checkpoints import copy_tokenizer, write_official_checkpoint

LYRICS = [
    "[intro-short] ; [verse] Paper boats on a silver stream.We fold the night ; [chorus] Hold on.Hold on ; [outro-short]",
    "[verse] 风吹过山岗.月光洒满窗 ; [chorus] 我们一起唱 ; [outro-short]",
    "[intro-medium] ; [verse] Count the stars.Name them all ; [bridge] Slowly now ; [outro-medium]",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fixtures):
    root = tmp_path_factory.mktemp("resume")
    ckpt = write_official_checkpoint(root / "ckpt", seed=3)
    runtime = root / "runtime"
    copy_tokenizer(fixtures, runtime)
    jobs = root / "songs.jsonl"
    jobs.write_text("".join(json.dumps({"idx": f"s{i}", "gt_lyric": lyric, "descriptions": "Pop, piano"},
                                       ensure_ascii=False) + "\n" for i, lyric in enumerate(LYRICS)))
    return root, ckpt, runtime, jobs


def command(setup, out: Path) -> list[str]:
    root, ckpt, runtime, jobs = setup
    return [sys.executable, "-m", "levo_batch", "generate", str(ckpt), str(jobs), str(out), "--tokens-only",
            "--runtime-dir", str(runtime), "--max-duration", "2", "--checkpoint-every", "7", "--batch-size", "2",
            "--seed", "11"]


def tokens(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in (out / "tokens").glob("*.npz"):
        if not path.name.endswith(".partial.npz"):
            with np.load(path) as npz:
                found[path.stem] = npz["tokens"]
    return found


@pytest.fixture(scope="module")
def reference(setup):
    out = setup[0] / "reference"
    done = subprocess.run(command(setup, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = tokens(out)
    assert sorted(found) == ["s0", "s1", "s2"]
    return found


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


KILL_POINTS = {
    "first-checkpoint": lambda out: any((out / "tokens").glob("*.partial.npz")),
    "first-song-done": lambda out: any(p for p in (out / "tokens").glob("*.npz") if ".partial" not in p.name),
    "two-checkpoints-later": lambda out: len(list((out / "tokens").glob("*.npz"))) >= 2,
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_9_then_resume_gives_identical_tokens(setup, reference, point, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(command(setup, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reached = wait_for(lambda: (out / "tokens").is_dir() and KILL_POINTS[point](out), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert reached, f"run ended before {point}: {proc.stderr.read().decode()[-2000:]}"
    assert (out / ".levo_batch.lock").exists()  # left behind by the killed run, taken over below
    resumed = subprocess.run(command(setup, out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got = tokens(out)
    assert sorted(got) == sorted(reference)
    for idx in reference:
        assert np.array_equal(got[idx], reference[idx]), idx
    leftovers = [p.name for p in (out / "tokens").iterdir() if p.name.endswith((".tmp", ".partial.npz"))]
    assert leftovers == []


def test_sigint_stops_at_a_safe_point_and_says_how_to_resume(setup, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(command(setup, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: any((out / "tokens").glob("*.partial.npz")) if (out / "tokens").is_dir() else False,
                    proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with the same command" in err
    assert not (out / ".levo_batch.lock").exists()
    resumed = subprocess.run(command(setup, out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got = tokens(out)
    assert all(np.array_equal(got[idx], reference[idx]) for idx in reference)
