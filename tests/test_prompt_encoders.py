"""Prompt audio -> LM prompt codes (rows 0, 1, 2) against upstream's `sound2code` on the tiny checkpoints."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from levo_batch.codec import septoken_encoder as se
from levo_batch.codec.septoken_encoder import RVQ1Encoder, SepTokenEncoder
from levo_batch.codec.weights import SafetensorsDict

SEP_FILE = ("decoder_tiny", "septoken_model.safetensors")
RVQ1_FILE = ("encoder_tiny", "rvq1_model.safetensors")


@pytest.fixture(scope="module")
def case(encode_case):
    return encode_case


@pytest.fixture(scope="module")
def sep(fixtures, w2v2):
    return SepTokenEncoder.load(fixtures.joinpath(*SEP_FILE), device="cpu", config=w2v2)


@pytest.fixture(scope="module")
def rvq1(fixtures, w2v2):
    return RVQ1Encoder.load(fixtures.joinpath(*RVQ1_FILE), device="cpu", config=w2v2)


def wav(case, name):
    return torch.from_numpy(case[name])


def test_rvq1_codes(rvq1, case):
    codes = rvq1.encode(wav(case, "pmt_wav"))
    assert codes.dtype == torch.int64 and codes.device.type == "cpu"
    assert codes.tolist() == case["rvq1_codes"].reshape(-1).tolist()


def test_septoken_codes(sep, case):
    vocal, bgm = sep.encode(wav(case, "vocal_wav"), wav(case, "bgm_wav"))
    assert vocal.tolist() == case["sep_codes_vocal"].reshape(-1).tolist()
    # The bgm stem's features differ by ~0.02 (sub-float32 mel bands, see test_musicfm.test_log_mel): codes
    # may only differ where upstream's own winner was a near-tie.
    ref = case["sep_codes_bgm"].reshape(-1)
    margin = case["sep_rvq_bgm_codes_margin"].reshape(2, -1)[0, : len(ref)]
    differ = bgm.numpy() != ref
    assert len(bgm) == 76 and differ.mean() < 0.05 and (margin[differ] < 2e-3).all()


@pytest.mark.parametrize("enc_name,prefix,vq_index", [
    ("rvq1", "rvq1_rvq", 0), ("sep", "sep_rvq_vocal", 0), ("sep", "sep_rvq_bgm", 1),
])
def test_codebooks_on_recorded_features(request, case, enc_name, prefix, vq_index):
    """Each encoder quantises with the right codebook: upstream's own MusicFM features -> its exact codes."""
    vq = request.getfixturevalue(enc_name).vqs[vq_index]
    codes = vq.to_codes(torch.from_numpy(case[f"{prefix}_in"]))
    np.testing.assert_array_equal(codes.numpy(), case[f"{prefix}_codes"][:, 0])


@pytest.mark.parametrize("enc_name,unit,vq_index", [
    ("rvq1", "unit_rvq1", 0), ("sep", "unit_sep_vocal", 0), ("sep", "unit_sep_bgm", 1),
])
def test_codebook_unit_cases(request, case, enc_name, unit, vq_index):
    vq = request.getfixturevalue(enc_name).vqs[vq_index]
    z = torch.from_numpy(case[f"{unit}_z"])
    z_e = F.linear(z.transpose(1, 2), vq.in_w, vq.in_b).transpose(1, 2)
    np.testing.assert_allclose(z_e.numpy(), case[f"{unit}_z_e"], atol=1e-5, rtol=1e-5)
    codes = vq.to_codes(z)
    np.testing.assert_array_equal(codes.numpy(), case[f"{unit}_codes"][:, 0])
    np.testing.assert_allclose(vq.embed(codes).transpose(1, 2).numpy(), case[f"{unit}_z_q"], atol=1e-5, rtol=1e-5)


def test_output_length_and_tiling():
    assert se.output_length(480000) == 251 and se.output_length(144000) == 76 and se.output_length(1) == 1
    clip = torch.arange(144000, dtype=torch.float32).repeat(2, 1)
    segments = se.tile_segments(clip)
    assert segments.shape == (2, 2, 1920000)
    assert torch.equal(segments[1, :, :100], clip[:, 48000:48100])  # 1920000 = 13 x 144000 + 48000
    assert se.tile_segments(torch.zeros(2, 480000)).shape[0] == 2  # exactly 40 s after looping -> 2 segments
    assert se.tile_segments(torch.zeros(2, 45 * 48000)).shape[0] == 2


def test_limit_peak():
    x = torch.tensor([[0.1, -1.6], [0.4, 0.2]])
    assert torch.allclose(se.limit_peak(x), x / 2)
    assert torch.equal(se.limit_peak(x / 4), x / 4)


def test_ten_seconds_encodes_one_segment(rvq1, monkeypatch):
    calls = []
    musicfm = rvq1.musicfm
    monkeypatch.setattr(rvq1, "musicfm", lambda wav, layer: calls.append(wav.shape) or musicfm(wav, layer))
    mix = torch.randn(2, 480000, generator=torch.Generator().manual_seed(0)) * 0.3
    codes = rvq1.encode(mix)
    assert codes.shape == (251,) and calls == [(1, 960000)]
    assert codes.min() >= 0 and codes.max() < 16384


def test_long_clip_two_segments_and_batching(sep, monkeypatch):
    g = torch.Generator().manual_seed(1)
    vocal, bgm = torch.randn(2, 45 * 48000, generator=g) * 0.2, torch.randn(2, 46 * 48000, generator=g) * 0.2
    v8, b8 = sep.encode(vocal, bgm)
    assert v8.shape == b8.shape == (1126,)  # the longer bgm is cut to the vocal's 45 s
    monkeypatch.setattr(sep, "batch_size", 1)
    v1, b1 = sep.encode(vocal, bgm)
    assert torch.equal(v1, v8) and torch.equal(b1, b8)


def test_reads_only_needed_tensors(fixtures, w2v2, monkeypatch):
    read = []
    original = SafetensorsDict.__getitem__
    monkeypatch.setattr(SafetensorsDict, "__getitem__", lambda self, key: read.append(key) or original(self, key))
    RVQ1Encoder.load(fixtures.joinpath(*RVQ1_FILE), device="cpu", config=w2v2)
    optional = {se.RESAMPLE_KEY, "bestrq.model.conformer.embed_positions.inv_freq"}
    assert set(read) == set(RVQ1Encoder.checkpoint_keys()) | optional
    assert not any(k.startswith(("bestrq.model.conformer.layers.6.", "bestrq.model.linear", "normfeat")) for k in read)

    read.clear()
    SepTokenEncoder.load(fixtures.joinpath(*SEP_FILE), device="cpu", config=w2v2)
    assert set(read) == set(SepTokenEncoder.checkpoint_keys()) | optional
    assert any(k.startswith("bestrq.model.conformer.layers.6.") for k in read)
    assert not any(k.startswith(("bestrq.model.conformer.layers.7.", "cfm_wrapper")) for k in read)


def test_missing_tensor_names_the_file(fixtures, w2v2, tmp_path):
    sd = load_file(fixtures.joinpath(*RVQ1_FILE))
    del sd["bestrq.model.conformer.layers.5.conv_module.depthwise_conv.weight"]
    path = tmp_path / "model_2_fixed.safetensors"
    save_file(sd, path)
    with pytest.raises(KeyError, match=f"{path}.*layers.5.conv_module.depthwise_conv.weight.*ckpt/model_1rvq"):
        RVQ1Encoder.load(path, device="cpu", config=w2v2)


def test_stored_kernel_and_rotary_frequencies_are_optional(fixtures, w2v2, rvq1):
    sd = load_file(fixtures.joinpath(*RVQ1_FILE))
    del sd[se.RESAMPLE_KEY], sd["bestrq.model.conformer.embed_positions.inv_freq"]
    enc = RVQ1Encoder.from_state_dict(sd, device="cpu", config=w2v2)
    assert torch.allclose(enc.kernel, rvq1.kernel, atol=1e-7, rtol=0)
    assert torch.allclose(enc.musicfm.inv_freq, rvq1.musicfm.inv_freq, atol=0, rtol=1e-6)


@pytest.mark.parametrize("bad", [torch.zeros(480000), torch.zeros(1, 480000), torch.zeros(2, 0)])
def test_rejects_non_stereo(rvq1, sep, bad):
    with pytest.raises(ValueError, match=r"shape \(2, N\)"):
        rvq1.encode(bad)
    with pytest.raises(ValueError, match="vocal prompt"):
        sep.encode(bad, torch.zeros(2, 100))
