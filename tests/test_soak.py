"""Issue 10, kill -9 soak: the sample album (prompt audio, auto prompt, plain songs) rendered by the real CLI on CPU
with tiny models, killed 20 times at points spread over prompt preparation, model loading, the LM and the
decoder (`--decoder-batch 4`), then finished: tokens, audio and output jsonl are bit-identical to an
uninterrupted run. Kill points are log markers (stderr is a file, so every progress step is a timestamped
line) plus a seeded random delay, so the kills land in every phase without depending on machine speed."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import tiny_runtime
from lm_checkpoints import write_official_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample" / "lyrics.jsonl"

PLAN = [
    *[("songs in", 0.05 * k) for k in range(3)],          # prompt preparation (separation, encoders)
    ("prompt of", 0.0),
    ("loading the LM \\.\\.\\.", 0.0),                      # model loading
    *[("LM: ", 0.02 * k) for k in range(10)],             # mid-song, at and between checkpoints
    ("loading the decoder \\.\\.\\.", 0.0),                 # decoder loading, then mid-decode
    *[("loading the decoder: ", 0.15 * k) for k in range(3)],
    ("decoding: .* written", 0.0),
]
PHASES = (("decoder", "loading the decoder"), ("LM", "loading the LM"), ("prompts", "songs in"))


def command(setup, out: Path) -> list[str]:
    ckpt, runtime = setup["ckpt"], setup["runtime"]
    return [sys.executable, "-m", "levo_batch", "generate", str(ckpt), str(SAMPLE), str(out), "--runtime-dir",
            str(runtime), "--max-duration", "3", "--device", "cpu", "--decoder-batch", "4", "--batch-size", "2",
            "--checkpoint-every", "7", "--seed", "3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fixtures):
    root = tmp_path_factory.mktemp("soak")
    return {"root": root, "ckpt": write_official_checkpoint(root / "ckpt", seed=2),
            "runtime": tiny_runtime.build(root / "runtime", fixtures).root}


def env_for(cache: Path) -> dict:
    return dict(os.environ, XDG_CACHE_HOME=str(cache), LEVO_PROGRESS_EVERY="0", OMP_NUM_THREADS="1")


def results(out: Path) -> dict:
    found = {}
    for path in sorted((out / "tokens").glob("*.npz")):
        with np.load(path) as npz:
            found[path.name] = npz["tokens"]
    for path in sorted((out / "audios").glob("*.flac")):
        found[path.name] = sf.read(path, dtype="int16")[0]
    text = (out / "jsonl" / "lyrics.jsonl.jsonl").read_text(encoding="utf-8")
    found["jsonl"] = [{k: v for k, v in json.loads(line).items() if k != "wav_path"} for line in text.splitlines()]
    return found


def kill_at(proc: subprocess.Popen, log: Path, marker: str, delay: float) -> str | None:
    """Kill -9 once `marker` appears (or a later phase starts), after `delay`; the phase it died in, or None
    if the run ended first."""
    pattern = re.compile(marker)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text(encoding="utf-8", errors="replace")
        if pattern.search(text) or (marker.startswith("LM") and "loading the decoder" in text):
            time.sleep(delay)
            proc.kill()
            proc.wait()
            text = log.read_text(encoding="utf-8", errors="replace")
            return next((name for name, start in PHASES if start in text), "start-up")
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    return None


def test_kill_9_soak_gives_the_uninterrupted_album(setup, tmp_path):
    reference = subprocess.run(command(setup, tmp_path / "reference"), capture_output=True, text=True,
                               env=env_for(tmp_path / "cache_ref"), timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    out, rng, phases = tmp_path / "soak", random.Random(10), []
    for k, (marker, delay) in enumerate(PLAN):
        log = tmp_path / f"kill{k}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(command(setup, out), stdout=subprocess.DEVNULL, stderr=err,
                                    env=env_for(tmp_path / "cache"))
            phase = kill_at(proc, log, marker, delay + rng.uniform(0, 0.05))
        assert phase is not None, f"run {k} ended before {marker!r}: {log.read_text()[-2000:]}"
        phases.append(phase)
    assert len(phases) >= 20 and {"prompts", "LM", "decoder"} <= set(phases), phases
    final = subprocess.run(command(setup, out), capture_output=True, text=True, env=env_for(tmp_path / "cache"),
                           timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    want, got = results(tmp_path / "reference"), results(out)
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]) if name != "jsonl" else got[name] == want[name], name
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".tmp", ".partial.npz", ".corrupt"))]
    assert leftovers == [] and not (out / ".levo_batch.lock").exists()
