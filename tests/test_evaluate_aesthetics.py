"""Audiobox Aesthetics through the package's own model class (randomly initialised: the weights are a
download): the scorer's windows, masks and normalisation reach AesMultiOutput and come back as four scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from levo_batch.audio import resample
from levo_batch.evaluate.aesthetics import AXES, AestheticsScorer

NORMS = {"CE": (5.5, 1.2), "CU": (6.0, 1.5), "PC": (4.0, 1.1), "PQ": (7.0, 0.9)}


@pytest.fixture(scope="module")
def scorer(one_torch_thread) -> AestheticsScorer:
    from audiobox_aesthetics.model.aes import AesMultiOutput

    torch.manual_seed(0)
    model = AesMultiOutput(target_transform={a: {"mean": m, "std": s} for a, (m, s) in NORMS.items()})
    return AestheticsScorer(model, "cpu")


def test_scores_come_from_the_model_denormalised_per_axis(scorer):
    sr = 48000
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((2, 3 * sr))).astype(np.float32)
    scores = scorer.score(audio, sr)
    assert list(scores) == list(AXES)
    # the same window fed to the model by hand: mono 16 kHz, zero-padded to 10 s, masked past the audio
    wav = resample(torch.from_numpy(audio), sr, 16000).mean(dim=0)
    window = torch.nn.functional.pad(wav, (0, 160000 - wav.shape[-1]))
    mask = torch.arange(160000) < wav.shape[-1]
    with torch.inference_mode():
        raw = scorer.model({"wav": window[None, None], "mask": mask[None, None]})
    for axis, (mean, std) in NORMS.items():
        assert scores[axis] == pytest.approx(float(raw[axis][0]) * std + mean, rel=1e-5)
        assert np.isfinite(scores[axis])
