"""bench/e2e.py end to end on CPU at tiny size, and the random real-format checkpoints of bench/common.py."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

BENCH = Path(__file__).resolve().parents[1] / "bench"
SONGS, DURATION = 2, 1.0


@pytest.fixture(scope="module")
def bench(request):
    """bench/common.py and bench/e2e.py imported as the scripts see each other (bench/ on sys.path)."""
    sys.path.insert(0, str(BENCH))
    request.addfinalizer(lambda: sys.path.remove(str(BENCH)))
    return importlib.import_module("common"), importlib.import_module("e2e")


def run_e2e(work: Path, fixtures: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / "e2e.py"), "--tiny", "--songs", str(SONGS), "--duration", str(DURATION),
           "--batch-size", "2", "--work", str(work), "--fixtures", str(fixtures), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def album(tmp_path_factory, fixtures):
    work = tmp_path_factory.mktemp("e2e")
    return work, run_e2e(work, fixtures)


def test_tiny_album_renders_every_song_to_full_length(album):
    work, done = album
    frames = int(DURATION * 25)
    flacs = sorted((work / "out" / "audios").glob("*.flac"))
    assert len(flacs) == SONGS
    for flac in flacs:
        info = sf.info(flac)
        assert (info.samplerate, info.channels, info.frames) == (48000, 2, frames * 1920)
        with np.load(work / "out" / "tokens" / f"{flac.stem}.npz") as record:
            assert record["tokens"].shape == (3, frames)  # no EOS: the bench's worst case
    assert (work / "lm-tiny-bf16" / "config.json").is_file()
    assert "wrote LM checkpoint" in done.stdout and "wrote runtime assets" in done.stdout
    for row in ("LM phase", "LM steps/s", "decoder phase", "decoder s per 150 s of audio", "extrapolated 100 songs",
                "songs/hour (steady, no loads)", "MLX peak memory"):
        assert row in done.stdout
    steps = int(re.search(r"(\d+) batched steps", done.stdout).group(1))
    assert steps >= frames + 250  # every pattern column of the longest song, one batched step each


def test_decoder_only_reuses_runtime_and_tokens(album, fixtures):
    work, _ = album
    done = run_e2e(work, fixtures, "--decoder-only")
    assert "reusing runtime assets" in done.stdout
    assert "seeded random tokens for 0 songs" in done.stdout
    assert "LM phase" not in done.stdout and "decoder phase" in done.stdout
    assert len(list((work / "out" / "audios").glob("*.flac"))) == SONGS


def test_album_is_valid_mixed_language_input(bench, tmp_path):
    from levo_batch.jobs import load_jobs

    common, _ = bench
    jobs, warnings = load_jobs(common.write_songs(tmp_path / "album.jsonl", 40))
    assert warnings == [] and len(jobs) == 40
    assert {j.idx[:2] for j in jobs} == {"en", "zh"}
    assert any(j.descriptions is None for j in jobs) and any(j.descriptions for j in jobs)
    assert all(j.gt_lyric.startswith("[intro-") and "[chorus]" in j.gt_lyric for j in jobs)


@pytest.mark.parametrize("size", ["medium", "large"])
@pytest.mark.parametrize("bits", [None, 4, 8])
def test_real_size_lm_specs_match_the_model(bench, size, bits):
    """What the writer would put in the file is exactly what `load_lm` expects (lazy MLX model, nothing allocated)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from levo_batch.lm.model import LeVoLM

    common, _ = bench
    cfg = common.lm_config(size)
    model = LeVoLM(cfg)
    if bits:
        nn.quantize(model, group_size=64, bits=bits)
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    specs = common.lm_specs(cfg, bits, 64)
    assert {k: s.shape for k, s in specs.items()} == expected
    assert {s.dtype for s in specs.values()} == ({"U32", "BF16"} if bits else {"BF16"})


def test_written_lm_checkpoint_loads_sharded_and_quantised(bench, tmp_path):
    from levo_batch.lm.loading import load_lm

    common, _ = bench
    cfg = common.lm_config("tiny")
    ckpt = common.write_lm_checkpoint(tmp_path / "lm", cfg, quantize=4, max_shard_bytes=8 << 20)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = load_lm(ckpt)
    assert loaded.config == replace(cfg, quantization={"bits": 4, "group_size": 64})
    head = loaded.model.transformer.lm_head
    weight = mx.dequantize(head.weight, head.scales, head.biases, group_size=64, bits=4)
    assert not mx.any(weight[cfg.eos_id]).item() and mx.any(weight[0]).item()


def test_write_safetensors_streams_exact_tensors(bench, tmp_path):
    from safetensors.numpy import load_file

    common, _ = bench
    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, -1], dtype=np.int64)}
    specs = {"a": common.TensorSpec("F32", (2, 3)), "b": common.TensorSpec("I64", (2,))}
    path = common.write_safetensors(tmp_path / "x.safetensors", specs, values.__getitem__, {"format": "pt"})
    loaded = load_file(path)
    assert set(loaded) == {"a", "b"} and all(np.array_equal(loaded[k], values[k]) for k in values)
    assert common.read_safetensors_specs(path) == specs
    with pytest.raises(ValueError, match="b produced 8 bytes, its header says 16"):
        common.write_safetensors(tmp_path / "y.safetensors", specs, lambda k: values[k] if k == "a" else values[k][:1])
    assert not (tmp_path / "y.safetensors").exists()
