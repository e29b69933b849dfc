"""MusicFM against upstream's recorded internals (encoder_tiny fixture: mel, subsampler, conformer layers)."""


import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from levo_batch.audio import resample_kernel
from levo_batch.codec.conformer import rotary_table
from levo_batch.codec.musicfm import CHECKPOINT_NAMES, MEL_MEAN, MEL_STD, MusicFM
from levo_batch.codec.septoken_encoder import (
    RESAMPLE_KEY, limit_peak, resample_48k_to_24k, tile_segments,
)

PREFIX = "bestrq.model."
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def case(encode_case):
    return encode_case


@pytest.fixture(scope="module")
def rvq1_sd(fixtures):
    return load_file(fixtures / "encoder_tiny" / "rvq1_model.safetensors")


@pytest.fixture(scope="module")
def sep_sd(fixtures):
    return load_file(fixtures / "decoder_tiny" / "septoken_model.safetensors")


def musicfm_input(case, name, kernel):
    """Upstream's MusicFM input for one stream: peak-limited, tiled, mono, 24 kHz -> `[2 segments, 960000]`."""
    segments = tile_segments(limit_peak(torch.from_numpy(case[name])))
    return resample_48k_to_24k((segments[:, 0] + segments[:, 1]) / 2.0, kernel)


# (recorded prefix, stream, weights fixture, layers built)
CALLS = [("rvq1_call0", "pmt_wav", "rvq1_sd", 6), ("sep_call0", "vocal_wav", "sep_sd", 7),
         ("sep_call1", "bgm_wav", "sep_sd", 7)]


@pytest.fixture(scope="module")
def runs(request, case, w2v2):
    """MusicFM built from each checkpoint plus its 24 kHz input, per recorded call."""
    out = {}
    for tag, stream, sd_name, n_layers in CALLS:
        sd = request.getfixturevalue(sd_name)
        model = MusicFM.from_state_dict(sd, n_layers, w2v2=w2v2, device="cpu")
        out[tag] = model, musicfm_input(case, stream, sd[RESAMPLE_KEY])
    return out


def test_resample_kernel_matches_torchaudio_buffer(rvq1_sd):
    assert torch.allclose(resample_kernel(48000, 24000)[0], rvq1_sd[RESAMPLE_KEY], atol=1e-7, rtol=0)


@pytest.mark.parametrize("tag", [c[0] for c in CALLS])
def test_resampled_input(runs, case, tag):
    _, wav = runs[tag]
    assert wav.shape == (2, 960000)
    np.testing.assert_allclose(wav[:, :120000].numpy(), case[f"{tag}_musicfm_in_24k_first5s"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("tag", [c[0] for c in CALLS])
def test_log_mel(runs, case, tag):
    model, wav = runs[tag]
    mel = model.log_mel(wav)
    assert mel.shape == (2, 128, 4000) and mel.dtype == torch.float32
    ours, ref = mel[..., :500].numpy(), case[f"{tag}_mel_norm_first500"]
    # Bands far below their frame's loudest band are under float32 FFT rounding in upstream's numbers (the bgm
    # stem reaches -141 dB); we compute in float64, so compare where float32 resolves the value.
    db = ref * MEL_STD + MEL_MEAN
    resolved = db.max(axis=1, keepdims=True) - db < 80
    assert resolved.mean() > 0.5  # the synthetic bgm is steeply low-passed: ~43 % of its bands are unresolved
    np.testing.assert_allclose(ours[resolved], ref[resolved], **TOL)
    np.testing.assert_allclose(ours, ref, atol=0.1, rtol=0)


def layer_results(model, wav):
    """Every `layer_results[k]`, k = 0..n_layers, in one pass (the forward recomputes from the audio per call)."""
    h = model(wav, 0)
    cos, sin = rotary_table(model.inv_freq, h.shape[1])
    out = [h]
    for block in model.conformer.layers:
        out.append(block(out[-1], cos, sin))
    return out


@pytest.mark.parametrize("tag,layers", [("rvq1_call0", (0, 6)), ("sep_call0", (0, 3, 7))])
def test_layer_results(runs, case, tag, layers):
    model, wav = runs[tag]
    hidden = layer_results(model, wav)
    assert torch.equal(hidden[-1], model(wav, len(hidden) - 1))
    for layer in layers:
        assert hidden[layer].shape == (2, 1000, 32)
        np.testing.assert_allclose(hidden[layer].numpy(), case[f"{tag}_hidden{layer}"], **TOL, err_msg=f"layer {layer}")


def test_layer_results_bgm_stream(runs, case):
    """Same path, but the bgm stem's sub-float32 bands (see test_log_mel) move features by up to ~0.02."""
    model, wav = runs["sep_call1"]
    hidden = layer_results(model, wav)
    for layer in (0, 3, 7):
        np.testing.assert_allclose(hidden[layer].numpy(), case[f"sep_call1_hidden{layer}"], atol=0.05, rtol=0)


def test_builds_only_needed_layers(rvq1_sd, w2v2, runs):
    small = MusicFM.from_state_dict(rvq1_sd, 3, w2v2=w2v2, device="cpu")
    assert len(small.conformer.layers) == 3
    _, wav = runs["rvq1_call0"]
    full = runs["rvq1_call0"][0]
    assert torch.equal(small(wav[:, :96000], 3), full(wav[:, :96000], 3))
    with pytest.raises(ValueError, match="layer 4 not built.*0..3"):
        small(wav[:, :96000], 4)


def test_checkpoint_keys():
    keys = MusicFM.checkpoint_keys(7)
    assert len(keys) == len(set(keys))
    assert PREFIX + CHECKPOINT_NAMES["mel_fb"] in keys and PREFIX + "conv.conv.1.bn3.running_var" in keys
    assert any(k.startswith(PREFIX + "conformer.layers.6.") for k in keys)
    assert not any(k.startswith(PREFIX + "conformer.layers.7.") for k in keys)
    assert not any("num_batches_tracked" in k or "pos_conv_embed" in k or k == PREFIX + "linear.weight" for k in keys)
    assert PREFIX + CHECKPOINT_NAMES["inv_freq"] not in keys  # optional: recomputed when absent
    assert len(MusicFM.checkpoint_keys(1)) == len(keys) - 6 * 33


def test_wrong_head_count_is_reported(rvq1_sd):
    with pytest.raises(ValueError, match="not divisible by num_attention_heads=5"):
        MusicFM.from_state_dict(rvq1_sd, 1, w2v2={"num_attention_heads": 5}, device="cpu")
    with pytest.raises(ValueError, match="inv_freq.*is num_attention_heads right"):
        MusicFM.from_state_dict(rvq1_sd, 1, device="cpu")  # real default: 16 heads do not fit width 32


def test_half_precision_runs(rvq1_sd, w2v2, runs):
    model = MusicFM.from_state_dict(rvq1_sd, 2, w2v2=w2v2, device="cpu", dtype=torch.bfloat16)
    assert model.window.dtype == torch.float32 and model.conv.linear.weight.dtype == torch.bfloat16
    _, wav = runs["rvq1_call0"]
    hidden = model(wav[:1, :96000], 2)
    assert hidden.dtype == torch.bfloat16 and hidden.shape == (1, 100, 32)
