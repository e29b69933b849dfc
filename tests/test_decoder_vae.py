"""Oobleck VAE against upstream's recorded outputs (decoder_tiny fixtures) and the weight-loading contract."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_meta import decoder_arrays, decoder_case, decoder_meta
from safetensors.torch import load_file, save_file

from levo_batch.decoder.vae import OobleckVAE, VAEConfig, load_vae
from levo_batch.decoder.vae_blocks import Conv1d, ConvTranspose1d

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(fixtures) -> Path:
    return fixtures / "decoder_tiny"


@pytest.fixture(scope="module")
def vae(tiny) -> OobleckVAE:
    return load_vae(tiny / "vae_config.json", tiny / "vae.safetensors", device=CPU)


@pytest.fixture(scope="module")
def unit(tiny):
    return np.load(tiny / "vae_unit.npz")


def assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(actual.shape) == expected.shape
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stride,kernel,dilation,padding", [(1, 7, 9, 27), (1, 1, 1, 0), (10, 20, 1, 5),
                                                             (3, 6, 1, 2), (2, 4, 1, 1)])
def test_time_split_of_single_convolutions(stride, kernel, dilation, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 301)
    conv = Conv1d(3, 4, kernel, stride=stride, dilation=dilation, padding=padding)
    expected = torch.nn.functional.conv1d(x, conv.weight, conv.bias, stride, padding, dilation)
    conv.max_len = 60 + dilation * (kernel - 1)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)
    if dilation == 1 and kernel > 1:
        up = ConvTranspose1d(3, 4, kernel, stride=stride, padding=padding)
        expected = torch.nn.functional.conv_transpose1d(x, up.weight, up.bias, stride, padding)
        up.max_len = kernel + 5 * stride
        torch.testing.assert_close(up(x), expected, atol=1e-5, rtol=1e-5)


def assert_same_weights(a: OobleckVAE, b: OobleckVAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_plain_decode_matches_upstream(vae, unit):
    """Upstream decoded the first latents plainly: as many as the recorded wave is long."""
    hop = unit["wav_chunked128"].shape[-1] // unit["latents"].shape[-1]
    latents = torch.from_numpy(unit["latents"])[:, :, : unit["wav_plain_first40"].shape[-1] // hop]
    assert_close(vae.decode(latents), unit["wav_plain_first40"])


def test_chunked_decode_matches_upstream(vae, unit):
    settings = decoder_meta()["code2sound"]
    out = vae.decode_chunked(torch.from_numpy(unit["latents"]), chunk_size=settings["vae_chunk_size"],
                             overlap=settings["vae_overlap"])
    assert out.dtype == torch.float32
    assert_close(out, unit["wav_chunked128"])


def test_encoder_and_sampled_bottleneck_match_upstream(vae, unit):
    audio = torch.from_numpy(unit["enc_audio_in"])
    assert_close(vae.encoder(audio), unit["enc_pre_bottleneck"])
    assert_close(vae.encode(audio, noise=torch.from_numpy(unit["vae_bottleneck_noise"])), unit["enc_latents"])


def test_prompt_mix_encode_matches_upstream(vae):
    case = decoder_arrays(decoder_case(windows="one", prompt=True))
    mix = torch.from_numpy(case["prompt_raw_vocal_wav"] + case["prompt_raw_bgm_wav"])  # [2, N] as upstream
    latents = vae.encode_audio(mix, noise=torch.from_numpy(case["d0_vae_bottleneck_noise"]))
    assert_close(latents, case["d0_vae_enc_out"])


def test_encode_draws_noise_from_generator(vae):
    audio = torch.randn(2, 2, 1920 * 3, generator=torch.Generator().manual_seed(1))
    first = vae.encode(audio, generator=torch.Generator().manual_seed(7))
    again = vae.encode(audio, generator=torch.Generator().manual_seed(7))
    other = vae.encode(audio, generator=torch.Generator().manual_seed(8))
    noise = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(7))
    assert first.shape == (2, 64, 3)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first, vae.encode(audio, noise=noise))


def test_encode_audio_rejects_wrong_channels(vae):
    with pytest.raises(ValueError, match=r"expects audio \[2, N\] or \[B, 2, N\], got \[1, 1, 3840\]"):
        vae.encode_audio(torch.zeros(1, 1, 3840))


def test_chunk_batching_matches_one_at_a_time(vae):
    latents = torch.randn(2, 64, 42, generator=torch.Generator().manual_seed(3))
    # chunk 16 / overlap 4 over 42 frames: chunks at 0, 12, 24 and a right-aligned one at 26
    sequential = vae.decode_chunked(latents, chunk_size=16, overlap=4, max_batch=1)
    batched = vae.decode_chunked(latents, chunk_size=16, overlap=4, max_batch=5)
    per_song = torch.cat([vae.decode_chunked(latents[i : i + 1], chunk_size=16, overlap=4) for i in range(2)])
    assert sequential.shape == (2, 2, 42 * 1920)
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_song, sequential, atol=1e-5, rtol=1e-5)
    # every sample of an inner chunk is pasted from the chunk decoded on its own (hard cuts, no blend)
    alone = vae.decode(latents[:, :, 12:28])
    torch.testing.assert_close(sequential[:, :, 14 * 1920 : 26 * 1920], alone[:, :, 2 * 1920 : 14 * 1920],
                               atol=1e-5, rtol=1e-5)


def test_chunked_decode_of_one_chunk_or_less_is_plain(vae):
    latents = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(4))
    plain = vae.decode(latents)
    assert torch.equal(vae.decode_chunked(latents, chunk_size=16, overlap=4), plain)
    assert torch.equal(vae.decode_chunked(latents, chunk_size=128), plain)


def test_time_split_convolutions_are_exact(tiny):
    """The split that keeps old-macOS MPS convolutions under their size limit, forced on CPU."""
    vae = load_vae(tiny / "vae_config.json", tiny / "vae.safetensors", device=CPU)
    latents = torch.randn(1, 64, 4, generator=torch.Generator().manual_seed(5))
    audio = torch.randn(1, 2, 1920 * 3 + 17, generator=torch.Generator().manual_seed(6))
    noise = torch.randn(1, 64, 3, generator=torch.Generator().manual_seed(7))
    whole = vae.decode(latents), vae.encode(audio, noise=noise)
    convs = [m for m in vae.modules() if isinstance(m, (Conv1d, ConvTranspose1d))]
    for conv in convs:
        conv.max_len = 2000
    split = vae.decode(latents), vae.encode(audio, noise=noise)
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_loads_official_ckpt_layout(vae, tiny, tmp_path):
    sd = load_file(tiny / "vae.safetensors")
    extra = {"discriminator.convs.0.weight": torch.zeros(3, 2), "bottleneck.unused": torch.ones(1)}
    path = tmp_path / "autoencoder_music_1320k.ckpt"
    torch.save({"state_dict": {**sd, **extra}, "global_step": 1320000, "epoch": 3}, path)
    loaded = load_vae(tiny / "vae_config.json", path, device=CPU)
    assert loaded.dtype == torch.float32 and not any(p.requires_grad for p in loaded.parameters())
    assert_same_weights(loaded, vae)
    assert "decoder.layers.1.layers.1.weight" in loaded.state_dict()  # folded, no weight_g/weight_v left


def test_loads_parametrization_weight_norm_names(vae, tiny, tmp_path):
    renamed = {k.replace("weight_g", "parametrizations.weight.original0")
               .replace("weight_v", "parametrizations.weight.original1"): v
               for k, v in load_file(tiny / "vae.safetensors").items()}
    save_file(renamed, tmp_path / "vae.safetensors")
    loaded = load_vae(tiny / "vae_config.json", tmp_path / "vae.safetensors", device=CPU)
    assert_same_weights(loaded, vae)


def test_decoder_only_load(vae, tiny, tmp_path):
    decoder_only = {k: v for k, v in load_file(tiny / "vae.safetensors").items() if k.startswith("decoder.")}
    path = tmp_path / "dec.safetensors"
    save_file(decoder_only, path)
    dec = load_vae(tiny / "vae_config.json", path, device=CPU, parts=("decoder",))
    assert dec.encoder is None
    latents = torch.randn(1, 64, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(dec.decode(latents), vae.decode(latents))
    with pytest.raises(RuntimeError, match="loaded without its encoder"):
        dec.encode(torch.zeros(1, 2, 1920))
    with pytest.raises(ValueError, match=r"missing keys: encoder\.layers\.0\.bias, encoder\.layers\.0\.weight_g"):
        load_vae(tiny / "vae_config.json", path, device=CPU)


def test_missing_key_error_names_key_and_files(tiny, tmp_path):
    sd = load_file(tiny / "vae.safetensors")
    del sd["decoder.layers.7.weight_v"]
    path = tmp_path / "broken.safetensors"
    save_file(sd, path)
    with pytest.raises(ValueError) as err:
        load_vae(tiny / "vae_config.json", path, device=CPU, parts=("decoder",))
    message = str(err.value)
    assert f"{path} does not fit the VAE decoder described by {tiny / 'vae_config.json'}" in message
    assert "missing keys: decoder.layers.7.weight_v." in message
    assert "autoencoder_music_1320k.ckpt" in message


def test_unexpected_key_and_shape_mismatch_errors(tiny, tmp_path):
    sd = load_file(tiny / "vae.safetensors")
    sd["decoder.layers.8.weight"] = torch.zeros(2)
    save_file(sd, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys: decoder\.layers\.8\.weight"):
        load_vae(tiny / "vae_config.json", tmp_path / "extra.safetensors", device=CPU)
    config = json.loads((tiny / "vae_config.json").read_text())
    decoder = config["model"]["decoder"]["config"]
    for part in ("encoder", "decoder"):
        config["model"][part]["config"]["channels"] *= 2
    (tmp_path / "wide.json").write_text(json.dumps(config))
    wide, latent = decoder["channels"] * decoder["c_mults"][-1], decoder["latent_dim"]
    shape_error = (rf"shape mismatch: decoder\.layers\.0\.weight \({wide // 2}, {latent}, 7\) "
                   rf"\(config expects \({wide}, {latent}, 7\)\)")
    with pytest.raises(ValueError, match=shape_error):
        load_vae(tmp_path / "wide.json", tiny / "vae.safetensors", device=CPU)


class _Opaque:
    """Stands for Lightning's hyper-parameter objects, which torch.load(weights_only=True) refuses."""


def test_unsafe_checkpoint_explains_conversion(tiny, tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": load_file(tiny / "vae.safetensors"), "hyper_parameters": _Opaque()}, path)
    with pytest.raises(ValueError, match="convert it once to safetensors"):
        load_vae(tiny / "vae_config.json", path, device=CPU)
    with pytest.raises(FileNotFoundError, match="VAE weights not found"):
        load_vae(tiny / "vae_config.json", tmp_path / "nope.ckpt", device=CPU)


def test_config_from_json(tiny, tmp_path):
    expected = VAEConfig(channels=4, c_mults=(1, 2, 4, 8, 16), strides=(2, 4, 4, 6, 10), latent_dim=64,
                         io_channels=2, use_snake=True, final_tanh=False, sample_rate=48000)
    config = VAEConfig.from_json(tiny / "vae_config.json")
    assert config == expected and config.downsampling_ratio == 1920
    raw = json.loads((tiny / "vae_config.json").read_text())
    wrapped = {"model_type": "diffusion_cond", "sample_rate": 48000,
               "model": {"pretransform": {"type": "autoencoder", "config": raw["model"]}}}
    (tmp_path / "wrapped.json").write_text(json.dumps(wrapped))
    assert VAEConfig.from_json(tmp_path / "wrapped.json") == expected
    raw["model"]["bottleneck"] = {"type": "rvq"}
    (tmp_path / "rvq.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"rvq\.json: unsupported VAE config: bottleneck"):
        VAEConfig.from_json(tmp_path / "rvq.json")


def test_dtype_choice_casts_inputs(tiny):
    half = load_vae(tiny / "vae_config.json", tiny / "vae.safetensors", device=CPU, dtype=torch.bfloat16,
                    parts=("decoder",))
    out = half.decode(torch.zeros(1, 64, 2, dtype=torch.float64))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 3840)
