"""The production stages' settings, up-front checks and provenance recipe (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from levo_batch.stages import DefaultStages, GenerationSettings
from levo_batch.runtime import RuntimePaths
from lm_checkpoints import write_official_checkpoint


def recipe(ckpt, tmp_path, **settings) -> dict:
    stages = DefaultStages(GenerationSettings(ckpt, RuntimePaths(tmp_path / "rt"), **settings))
    assert stages.check(True) == []
    return stages.recipe(True)


def test_recipe_follows_what_changes_the_audio_only(tmp_path):
    ckpt = write_official_checkpoint(tmp_path / "ck")
    base = recipe(ckpt, tmp_path)
    assert recipe(ckpt, tmp_path, top_k=5000, temperature=0.8, max_duration=150) == base  # defaults, spelt out
    assert recipe(ckpt, tmp_path, batch_size=3, checkpoint_every=9) == base
    assert recipe(ckpt, tmp_path, temperature=0.7)["lm"]["sampling"]["temperature"] == 0.7
    assert recipe(ckpt, tmp_path, decoder_batch=2)["decoder"]["batch"] == 2
    assert recipe(ckpt, tmp_path, low_mem=True)["lm"]["low_mem"] is True
    write_official_checkpoint(tmp_path / "ck", seed=1)  # other weights in the same folder
    assert recipe(ckpt, tmp_path)["lm"]["model"] != base["lm"]["model"]


def _settings(**kw) -> GenerationSettings:
    return GenerationSettings(ckpt_dir=Path("ck"), runtime=RuntimePaths(Path("rt")), **kw)


def test_lm_precision_is_upstream_fp16_on_a_gpu_and_bf16_on_request(monkeypatch):
    """fp16 is upstream's precision and measured ~10x closer to float32 logits than bf16 (README, "LM
    precision"); bf16 stays one flag away."""
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    assert _settings().lm_load_dtype() == "fp16"
    assert _settings(lm_dtype="bf16").lm_load_dtype() == "bf16"


def test_lm_precision_on_the_cpu_is_the_checkpoint_own(monkeypatch):
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.cpu))
    assert _settings().lm_load_dtype() is None
    assert _settings(lm_dtype="fp16").lm_load_dtype() == "fp16"
