"""Settings of the production stages that need no model: LM precision defaults."""

from pathlib import Path

import mlx.core as mx

from levo_batch.backends import GenerationSettings
from levo_batch.runtime import RuntimePaths


def _settings(**kw) -> GenerationSettings:
    return GenerationSettings(ckpt_dir=Path("ck"), runtime=RuntimePaths(Path("rt")), **kw)


def test_lm_precision_is_fp16_on_a_gpu_like_upstream(monkeypatch):
    """fp16 was measured ~10x closer to float32 logits than bf16 (README, "LM precision")."""
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    assert _settings().lm_load_dtype() == "fp16"
    assert _settings(lm_dtype="bf16").lm_load_dtype() == "bf16"


def test_lm_precision_on_the_cpu_is_the_checkpoint_own(monkeypatch):
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.cpu))
    assert _settings().lm_load_dtype() is None
    assert _settings(lm_dtype="fp16").lm_load_dtype() == "fp16"
