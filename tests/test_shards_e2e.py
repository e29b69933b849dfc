"""Real `levo-batch generate` processes (tiny MLX LM + tiny decoder on CPU) sharing one SAVE_DIR: three shards at
once render the album of one process exactly, song by song; a shard killed with SIGKILL and re-run alone completes
it; `--gpus` on fake devices, stopped by Ctrl-C and run again, ends with the same album.

Decoding runs one window at a time (`--decoder-batch 1`): on the CPU a window decoded in a batch differs from the
same window decoded alone in the last bits, and a shard batches fewer songs than one process does."""

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

import tiny_runtime
from lm_checkpoints import write_official_checkpoint
from test_cli import messages

LYRICS = [
    "[intro-short] ; [verse] Paper boats.We fold the night ; [chorus] Hold on ; [outro-short]",
    "[verse] 风吹过山岗.月光洒满窗 ; [chorus] 我们一起唱 ; [outro-short]",
    "[intro-medium] ; [verse] Count the stars ; [bridge] Slowly now ; [outro-medium]",
]
SONGS = 3
SHARDS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fixtures):
    root = tmp_path_factory.mktemp("shards")
    runtime = tiny_runtime.build(root / "runtime", fixtures, genres=("Pop",))
    ckpt = write_official_checkpoint(root / "ckpt", seed=3)
    jobs = root / "album.jsonl"
    jobs.write_text("".join(json.dumps({"idx": f"s{i}", "gt_lyric": LYRICS[i % 3], "descriptions": "Pop, piano"},
                                       ensure_ascii=False) + "\n" for i in range(SONGS)))
    env = dict(os.environ, XDG_CACHE_HOME=str(root / "cache"), OMP_NUM_THREADS="1")
    return root, ckpt, runtime.root, jobs, env


def command(setup, out: Path, *flags: str) -> list[str]:
    root, ckpt, runtime, jobs, _ = setup
    return [sys.executable, "-m", "levo_batch", "generate", str(ckpt), str(jobs), str(out), *flags,
            "--runtime-dir", str(runtime), "--max-duration", "1.5", "--checkpoint-every", "7", "--batch-size", "2",
            "--seed", "11", "--device", "cpu", "--decoder-batch", "1"]


def start(setup, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(command(setup, out, *flags), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=setup[4])


def album(out: Path) -> dict[str, object]:
    """Everything a render leaves: token arrays (npz zip headers carry a clock), flac bytes, the jsonl."""
    found: dict[str, object] = {}
    for path in sorted((out / "tokens").iterdir()):
        with np.load(path) as npz:
            found[f"tokens/{path.name}"] = (npz["tokens"].tolist(), str(npz["fingerprint"]))
    for path in sorted((out / "audios").iterdir()):
        found[f"audios/{path.name}"] = path.read_bytes()
    found["jsonl"] = (out / "jsonl" / "album.jsonl.jsonl").read_text().replace(str(out), "SAVE_DIR")
    return found


@pytest.fixture(scope="module")
def reference(setup) -> dict[str, object]:
    out = setup[0] / "single"
    done = subprocess.run(command(setup, out), capture_output=True, text=True, timeout=600, env=setup[4])
    assert done.returncode == 0, done.stderr[-3000:]
    found = album(out)
    assert len([k for k in found if k.startswith("audios/")]) == SONGS
    return found


def done_songs(stderr: str) -> int:
    summary = next(line for line in messages(stderr) if line.startswith("done "))
    return int(summary.split()[1].rstrip(","))


def test_three_shards_at_once_render_the_album_of_one_process(setup, reference, tmp_path):
    out = tmp_path / "out"
    procs = [start(setup, out, "--shard", f"{k}/{SHARDS}") for k in range(SHARDS)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    for k, (proc, err) in enumerate(zip(procs, errs)):
        assert proc.returncode == 0, err[-3000:]
        assert messages(err)[0] == f"shard {k}/{SHARDS} (from --shard)"
        assert done_songs(err) == SONGS // SHARDS  # each song rendered once, by its own shard
    assert album(out) == reference
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".tmp", ".partial.npz", ".lock"))]
    assert leftovers == []


def test_a_shard_killed_mid_song_and_run_again_alone_completes_the_album(setup, reference, tmp_path):
    out = tmp_path / "out"
    procs = [start(setup, out, "--shard", f"{k}/{SHARDS}") for k in range(SHARDS)]
    victim = procs[1]
    deadline = time.monotonic() + 300
    while not list(out.glob("tokens/s1.partial.npz")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    reached = bool(list(out.glob("tokens/s1.partial.npz")))
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert reached, "shard 1 ended before its first checkpoint"
    for proc in (procs[0], procs[2]):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert (out / ".levo_batch.shard-1-of-3.lock").exists()  # left by the killed run, taken over below
    again = subprocess.run(command(setup, out, "--shard", f"1/{SHARDS}"), capture_output=True, text=True,
                           timeout=600, env=setup[4])
    assert again.returncode == 0, again.stderr[-3000:]
    assert album(out) == reference


def test_gpus_launcher_with_fake_devices_forwards_ctrl_c_and_resumes_to_the_same_album(setup, reference, tmp_path):
    out = tmp_path / "out"
    env = dict(setup[4], CUDA_VISIBLE_DEVICES="3,5")
    parent = subprocess.Popen(command(setup, out, "--gpus", "0,1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env)
    deadline = time.monotonic() + 300
    while not list(out.glob("tokens/*.partial.npz")) and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    parent.send_signal(signal.SIGINT)  # what Ctrl-C does: only the parent's session gets it
    _, err = parent.communicate(timeout=600)
    assert parent.returncode == 130, err[-3000:]
    assert "[gpu 3] shard 0/2 (from --shard), CUDA_VISIBLE_DEVICES=3" in err
    assert "[gpu 5] shard 1/2 (from --shard), CUDA_VISIBLE_DEVICES=5" in err
    assert "[gpu 3] interrupted: everything finished so far is saved" in err
    assert err.rstrip().endswith("resume with the same command")
    done = subprocess.run(command(setup, out, "--gpus", "0,1"), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu 3, shard 0/2: ok; done " in done.stderr and "gpu 5, shard 1/2: ok; done " in done.stderr
    assert album(out) == reference
