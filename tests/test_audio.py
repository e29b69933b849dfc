"""Audio reading and the torchaudio-exact resampler."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from safetensors import safe_open

from audio_files import FRAME, load_prompt_audio, write_m4a

from levo_batch.audio import (
    AudioError,
    apply_resample_kernel,
    prompt_window,
    read_audio,
    resample,
    resample_kernel,
)
from levo_batch.contracts import SAMPLE_RATE


def _sinc_reference(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Direct float64 evaluation of windowed-sinc interpolation y[j] = sum_i x[i] h(i/sr_in - j/sr_out)."""
    g = math.gcd(sr_in, sr_out)
    orig, new = sr_in // g, sr_out // g
    base = min(orig, new) * 0.99
    n_out = math.ceil(new * len(x) / orig)
    i = np.arange(len(x), dtype=np.float64)
    y = np.empty(n_out)
    for j in range(n_out):
        t = np.clip((i / orig - j / new) * base, -6, 6)
        window = np.cos(t * np.pi / 12) ** 2
        h = np.where(t == 0, 1.0, np.sin(np.pi * t) / np.where(t == 0, 1.0, np.pi * t))
        y[j] = np.sum(x * h * window) * base / orig
    return y


@pytest.mark.parametrize(
    "key, rates", [("rsq48tobestrq.kernel", (48000, 24000)), ("rsq48tohubert.kernel", (48000, 16000))]
)
def test_kernel_equals_upstream_stored_kernel(fixtures, key, rates):
    with safe_open(str(fixtures / "decoder_tiny" / "septoken_model.safetensors"), "pt") as f:
        stored = f.get_tensor(key)
    kernel, _ = resample_kernel(*rates)
    assert kernel.dtype == torch.float32
    assert torch.equal(kernel, stored)


def test_48k_to_24k_is_the_spec_conv():
    kernel, width = resample_kernel(48000, 24000)
    assert kernel.shape == (1, 1, 28) and width == 13
    x = torch.randn(2, 1001)
    expected = F.conv1d(F.pad(x, (13, 15))[:, None], kernel, stride=2)[:, 0, :501]
    assert torch.equal(apply_resample_kernel(x, 48000, 24000, kernel, width), expected)


def test_musicfm_input_matches_upstream_fixture(encode_case):
    """The 24 kHz MusicFM input upstream computed from the encode_case prompt, bit for bit."""
    case = encode_case
    x = torch.from_numpy(case["pmt_wav"])
    x = x / (x.abs().max() / 0.8)  # sound2code's joint peak limit (the per-row 0.9 limit is then a no-op)
    x = torch.cat([x, x, x], dim=-1)[:, :250_000]  # the start of the looped 40-s segment
    kernel, width = resample_kernel(48000, 24000)
    out = apply_resample_kernel(((x[0] + x[1]) / 2)[None], 48000, 24000, kernel, width)
    expected = torch.from_numpy(case["rvq1_call0_musicfm_in_24k_first5s"][0])
    assert torch.equal(out[0, : expected.shape[-1]], expected)


@pytest.mark.parametrize("rates", [(44100, 48000), (48000, 44100), (16000, 48000), (48000, 24000)])
def test_resample_matches_float64_sinc_reference(rates):
    x = np.random.default_rng(0).standard_normal(700)
    out = resample(torch.from_numpy(x.astype(np.float32)), *rates).numpy()
    ref = _sinc_reference(x.astype(np.float32).astype(np.float64), *rates)
    assert out.shape == ref.shape
    # float32 input means a float32-computed kernel (torchaudio's functional path): ~1e-5 off the exact filter.
    np.testing.assert_allclose(out, ref, atol=1e-4)
    out64 = resample(torch.from_numpy(x), *rates).numpy()
    np.testing.assert_allclose(out64, _sinc_reference(x, *rates), atol=1e-12)


def test_resample_identity_and_batch_shapes():
    x = torch.randn(3, 2, 500)
    assert resample(x, 48000, 48000) is x
    out = resample(x, 44100, 48000)
    assert out.shape == (3, 2, math.ceil(500 * 160 / 147))
    torch.testing.assert_close(out[1, 0], resample(x[1, 0], 44100, 48000), atol=1e-6, rtol=0)


def test_output_length_uses_float32_ceil_like_torchaudio():
    n = 34 + 147 * 820  # 160 * n / 147 = 131237 + 1/147, which float32 rounds to 131237
    assert resample(torch.zeros(n), 44100, 48000).shape[-1] == 131237
    assert math.ceil(160 * n / 147) == 131238


def _write(path, data, sr, **kw):
    sf.write(str(path), data.T, sr, **kw)
    return path


def test_read_audio_formats(tmp_path):
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32767, size=(2, 4410), dtype=np.int16)
    path = _write(tmp_path / "a.wav", pcm, 44100, subtype="PCM_16")
    x, sr = read_audio(path)
    assert sr == 44100 and x.dtype == np.float32 and x.shape == (2, 4410)
    np.testing.assert_array_equal(x, pcm.astype(np.float32) / 32768)  # torchaudio.load's scaling
    y, _ = read_audio(_write(tmp_path / "a.flac", pcm, 44100, subtype="PCM_16"))
    np.testing.assert_array_equal(x, y)
    mono = (rng.standard_normal((1, 8000)) * 0.1).astype(np.float32)
    for name in ("m.ogg", "m.mp3"):
        z, sr = read_audio(_write(tmp_path / name, mono, 16000))
        assert sr == 16000 and z.shape[0] == 1 and z.shape[1] > 7000


def test_m4a_prompts_are_decoded_by_ffmpeg_then_cut_like_any_prompt(tmp_path):
    """Upstream's torchaudio reads m4a/aac through FFmpeg: same decoder here, then the usual 48 kHz / 10 s."""
    sr = 44100
    t = np.arange(12 * sr) / sr
    tone = (0.4 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)])).astype(np.float32)
    path = write_m4a(tmp_path / "clip.m4a", tone, sr)
    x, got_sr = read_audio(path)
    assert got_sr == sr and x.dtype == np.float32 and x.shape[0] == 2
    assert 12 * sr <= x.shape[1] < 12 * sr + FRAME  # encoder delay trimmed; only the last frame's padding remains
    assert float(np.sqrt(np.mean((x[:, : 12 * sr] - tone) ** 2))) < 0.01  # AAC at its default bitrate
    prompt = load_prompt_audio(path)
    assert prompt.shape == (2, 10 * SAMPLE_RATE)
    np.testing.assert_allclose(prompt, prompt_window(x, sr), atol=0)
    mono = write_m4a(tmp_path / "mono.aac", tone[:1, : 2 * sr], sr)
    assert read_audio(mono)[0].shape[0] == 1


def test_read_audio_errors(tmp_path):
    with pytest.raises(AudioError, match=r"audio file .*nope\.wav does not exist"):
        read_audio(tmp_path / "nope.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match=r"cannot read audio file .*junk\.wav: .*; FFmpeg cannot decode it either "
                                         r"\(.*\)\. Convert it to WAV or FLAC"):
        read_audio(junk)
    empty = _write(tmp_path / "empty.wav", np.zeros((2, 0), np.float32), 48000)
    with pytest.raises(AudioError, match=r"audio file .*empty\.wav contains no samples"):
        read_audio(empty)
    broken = _write(tmp_path / "nan.wav", np.array([[0.1, np.nan, 0.2]], np.float32), 48000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"audio file .*nan\.wav contains NaN or infinite samples"):
        read_audio(broken)


def test_load_prompt_audio_mono_44k_short(tmp_path):
    x = (np.random.default_rng(2).standard_normal((1, 3 * 44100)) * 0.1).astype(np.float32)
    out = load_prompt_audio(_write(tmp_path / "m.wav", x, 44100, subtype="FLOAT"))
    assert out.shape == (2, 144000) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], resample(torch.from_numpy(x[0]), 44100, 48000).numpy())


def test_load_prompt_audio_cuts_after_resampling(tmp_path):
    x = (np.random.default_rng(3).standard_normal((2, 12 * 44100)) * 0.1).astype(np.float32)
    out = load_prompt_audio(_write(tmp_path / "s.wav", x, 44100, subtype="FLOAT"))
    assert out.shape == (2, 480000)
    np.testing.assert_array_equal(out, resample(torch.from_numpy(x), 44100, 48000)[:, :480000].numpy())
    y = x[:, :48000 * 11]
    same = load_prompt_audio(_write(tmp_path / "s48.wav", y, 48000, subtype="FLOAT"))
    np.testing.assert_array_equal(same, y[:, :480000])


def test_load_prompt_audio_more_channels_keeps_first_two(tmp_path):
    x = (np.random.default_rng(4).standard_normal((4, 48000)) * 0.1).astype(np.float32)
    out = load_prompt_audio(_write(tmp_path / "quad.wav", x, 48000, subtype="FLOAT"))
    np.testing.assert_array_equal(out, x[:2])
