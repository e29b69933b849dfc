"""Estimator, Euler/CFG sampler and code2sound windowing against upstream's recorded decoder_tiny runs."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fixture_meta import decoder_arrays, decoder_case, decoder_case_with, decoder_geometry
from safetensors.torch import save_file

from levo_batch.codec.weights import SafetensorsDict
from levo_batch.decoder.estimator import DecoderConfig, Estimator
from levo_batch.decoder.flow import FlowDecoder, LatentNorm, seeded_noise, solve_euler
from levo_batch.decoder.windows import (SongWindows, WindowPlan, advance, crossfade_join, target_samples,
                                        tile_codes, vae_prefix, window_starts)

TINY = DecoderConfig(**decoder_geometry())
DEBUG = decoder_case_with("d0_chunk0_est_in_step0")
"""The case recorded with the flow's inner arrays (estimator input/output, velocities)."""
SHORT = decoder_case(windows="several", duration="other")
"""The case recorded with short flow windows, several of them."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def septoken(fixtures):
    return SafetensorsDict(fixtures / "decoder_tiny" / "septoken_model.safetensors")


@pytest.fixture(scope="module")
def flow(septoken):
    return FlowDecoder.from_state_dict(septoken, TINY)


def input_codes(case, prefix="d0_"):
    return np.concatenate([case[f"{prefix}codes_vocal_in"][0], case[f"{prefix}codes_bgm_in"][0]])


def window_codes(case, prefix, k):
    return np.concatenate([case[f"{prefix}chunk{k}_codes_vocal"][0], case[f"{prefix}chunk{k}_codes_bgm"][0]])


def flow_sampler(flow):
    """Batch WindowJobs for FlowDecoder.sample (what SepTokenDecoder does on its device)."""
    def sample(jobs):
        frames = jobs[0].codes.shape[-1]
        codes = torch.from_numpy(np.stack([j.codes for j in jobs]))
        context = torch.zeros(len(jobs), frames, 64)
        for i, job in enumerate(jobs):
            if job.incontext:
                context[i, : job.incontext] = job.context[: job.incontext]
        incontext = torch.tensor([j.incontext for j in jobs])
        return flow.sample(codes[:, 0], codes[:, 1], context, incontext, torch.stack([j.noise for j in jobs]))
    return sample


def recorded_noise(case, prefix):
    return lambda k: torch.from_numpy(case[f"{prefix}chunk{k}_noise_init"][0])


# --- estimator -------------------------------------------------------------------------------------------


def test_estimator_step0_output(septoken):
    case = decoder_arrays(DEBUG)
    est = Estimator.from_state_dict(septoken, TINY)
    t = torch.from_numpy(case["d0_chunk0_est_t"])
    with torch.no_grad():
        out = est(torch.from_numpy(case["d0_chunk0_est_in_step0"]), t[:1].expand(2))
    np.testing.assert_allclose(out.numpy(), case["d0_chunk0_est_out_step0_last64"], atol=1e-4, rtol=1e-4)


def test_estimator_needs_config_for_non_official_geometry(septoken):
    blocks = f"{TINY.n_layer} estimator blocks, the config {DecoderConfig.n_layer}"
    with pytest.raises(ValueError, match=f"{blocks}.*levo_decoder.json"):
        Estimator.from_state_dict(septoken, DecoderConfig())
    with pytest.raises(ValueError, match=r"do not fit.*levo_decoder.json"):
        Estimator.from_state_dict(septoken, replace(TINY, n_inner=TINY.n_inner - 32))


def test_config_file_overrides_defaults(tmp_path):
    weights = tmp_path / "model_2.safetensors"
    assert DecoderConfig.for_weights(weights) == DecoderConfig()
    (tmp_path / "levo_decoder.json").write_text(json.dumps({"n_layer": 2, "n_head": 4, "duration": 4}))
    cfg = DecoderConfig.for_weights(weights)
    assert (cfg.n_layer, cfg.n_head, cfg.duration, cfg.n_embd) == (2, 4, 4, 2200)
    (tmp_path / "levo_decoder.json").write_text(json.dumps({"layers": 2}))
    with pytest.raises(ValueError, match=r"levo_decoder.json: unknown keys \['layers'\]"):
        DecoderConfig.for_weights(weights)


# --- flow (inference_codes + solve_euler) ---------------------------------------------------------------


def test_flow_inputs_velocities_and_latents(flow):
    """Step-0 estimator input (uncond first), CFG velocity of every step, final latents."""
    case = decoder_arrays(DEBUG)
    codes = torch.from_numpy(window_codes(case, "d0_", 0))
    calls = []
    hook = flow.estimator.register_forward_hook(lambda module, args, out: calls.append((args[0], out)))
    try:
        noise = torch.from_numpy(case["d0_chunk0_noise_init"])
        latents = flow.sample(codes[None, 0], codes[None, 1], torch.zeros_like(noise), torch.tensor([0]), noise)
    finally:
        hook.remove()
    assert len(calls) == DEBUG["num_steps"]
    np.testing.assert_allclose(calls[0][0].numpy(), case["d0_chunk0_est_in_step0"], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(calls[0][1].numpy(), case["d0_chunk0_est_out_step0_last64"], atol=1e-4, rtol=1e-4)
    v_steps = torch.stack([u + DEBUG["guidance_scale"] * (c - u) for u, c in (out.chunk(2) for _, out in calls)])
    np.testing.assert_allclose(v_steps.numpy(), case["d0_chunk0_v_steps"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(latents.numpy(), case["d0_chunk0_latents"], atol=1e-4, rtol=1e-4)


def test_solve_euler_reimposes_prefix_every_step():
    noise = torch.randn(1, 6, 2)
    context = torch.full((1, 6, 2), 5.0)
    prefix = torch.tensor([True, True, False, False, False, False])[None, :, None]
    seen = []

    def velocity(x, t):
        seen.append((float(t), x[0, :2].clone()))
        return torch.ones_like(x)

    x = solve_euler(velocity, noise, context, prefix, steps=4)
    for t, head in seen:
        torch.testing.assert_close(head, (1 - (1 - 1e-4) * t) * noise[0, :2] + t * 5.0)
    torch.testing.assert_close(x[0, 2:], noise[0, 2:] + 1.0)
    assert [t for t, _ in seen] == [0.0, 0.25, 0.5, 0.75]


def test_windows_chain_in_context(flow):
    """Window codes after tiling and every window's latents, window k>0 conditioned on window k-1 (short windows:
    upstream's code2sound with a non-default duration; the long case runs end to end in test_decoder)."""
    case, decode = decoder_arrays(SHORT), SHORT["decodes"][0]
    plan = WindowPlan.for_duration(SHORT["code2sound_duration"])
    song = SongWindows("short", input_codes(case), recorded_noise(case, "d0_"), plan)
    assert (len(song.starts), song.target_len) == (decode["n_flow_windows"], decode["wav_shape"][-1])
    assert list(advance([song], flow_sampler(flow), batch_size=2)) == [song]
    assert len(song.latents) == decode["n_flow_windows"]
    for k, latents in enumerate(song.latents):
        start = song.starts[k]
        np.testing.assert_array_equal(song.grid[:, start : start + song.plan.frames], window_codes(case, "d0_", k))
        np.testing.assert_allclose(latents.numpy(), case[f"d0_chunk{k}_latents"][0], atol=1e-4, rtol=1e-4)


def test_batched_windows_equal_alone(flow):
    """Songs of different lengths (so different in-context lengths share a batch) sampled together give the
    same latents as one at a time (short windows keep this cheap)."""
    codes = input_codes(decoder_arrays(SHORT))
    plan = WindowPlan.for_duration(SHORT["code2sound_duration"])
    full = codes.shape[1]
    lengths = (full, plan.frames // 2, full * 3 // 4)

    def songs():
        return [SongWindows(n, codes[:, :n], lambda k, n=n: seeded_noise(n, f"w{k}", (plan.frames, 64)), plan)
                for n in lengths]

    together = {s.key: s for s in advance(songs(), flow_sampler(flow), batch_size=3)}
    alone = {s.key: s for s in advance(songs(), flow_sampler(flow), batch_size=1)}
    assert set(together) == set(lengths) and len(alone[full].latents) > 1 == len(alone[lengths[1]].latents)
    for key, song in alone.items():
        for a, b in zip(song.latents, together[key].latents, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=0)


def test_normfeat_partial_statistics_are_frozen_with_a_warning(septoken, tmp_path, caplog):
    sd = {k: septoken[k] for k in ("normfeat.counts", "normfeat.sum_x", "normfeat.sum_x2")}
    norm = LatentNorm.from_state_dict(sd)
    assert torch.allclose(norm.restore(norm.project(torch.ones(64))), torch.ones(64), atol=1e-5)
    sd["normfeat.counts"] = torch.tensor([5000.0])
    path = tmp_path / "model_2.safetensors"
    save_file(sd, str(path))
    partial = LatentNorm.from_state_dict(SafetensorsDict(path))
    assert "model_2.safetensors: normfeat.counts is 5000" in caplog.text and "frozen" in caplog.text
    assert torch.allclose(partial.mean, sd["normfeat.sum_x"].double().div(5000).float(), atol=1e-6)
    sd["normfeat.counts"] = torch.tensor([0.0])
    assert torch.equal(LatentNorm.from_state_dict(sd).std, torch.ones(64))


def test_seeded_noise_depends_on_seed_and_key_only():
    a = seeded_noise(7, "mixed/window0", (1000, 64))
    assert torch.equal(a, seeded_noise(7, "mixed/window0", (1000, 64)))
    assert not torch.equal(a, seeded_noise(7, "mixed/window1", (1000, 64)))
    assert not torch.equal(a, seeded_noise(8, "mixed/window0", (1000, 64)))


# --- windowing arithmetic --------------------------------------------------------------------------------


@pytest.mark.parametrize("n,expected", [(29, 55679), (57, 109439), (1003, 1925759), (251, 481919), (100, 192000)])
def test_target_samples_keeps_float_rounding(n, expected):
    assert target_samples(n, 0) == expected
    assert target_samples(n + 51, 51) == target_samples(n, 0) or n == 1003


def test_tiling_and_window_grid():
    plan = WindowPlan.for_duration()
    assert (plan.frames, plan.hop, plan.overlap) == (1000, 750, 250)
    codes = np.arange(2 * 29).reshape(2, 29)
    tiled = tile_codes(codes, plan)
    assert tiled.shape == (2, 1000) and np.array_equal(tiled[:, 29:58], codes)
    assert window_starts(1000, plan) == [0]
    for n, length, windows in [(1000, 1000, 1), (1001, 1750, 2), (1750, 1750, 2), (6750, 7000, 9)]:
        tiled = tile_codes(np.arange(n)[None], plan)
        assert tiled.shape[-1] == length and len(window_starts(length, plan)) == windows
        assert np.array_equal(tiled[0, n:], np.arange(length - n))
    assert WindowPlan.for_duration(4) == WindowPlan(100, 75)


def test_crossfade_is_linear_float64():
    a = np.ones((2, 10), np.float32)
    b = np.full((2, 10), 3.0, np.float32)
    out = crossfade_join([a, b], 4)
    assert out.shape == (2, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 6:10], 1 + 2 * np.linspace(0, 1, 4))
    assert (out[:, :6] == 1).all() and (out[:, 10:] == 3).all()


def test_vae_prefix_on_the_chunk_grid():
    assert vae_prefix(1000, 50, 128, 32) == 128
    assert vae_prefix(1000, 112, 128, 32) == 128
    assert vae_prefix(1000, 113, 128, 32) == 224
    assert vae_prefix(1000, 1000, 128, 32) == 1000
    assert vae_prefix(100, 10, 128, 32) == 100
    # 1000 frames: grid chunks start at 0, 96, ..., 864 and the right-aligned last one at 872, which takes over
    # from frame 888 on; a prefix ending at 992 is exact up to there only
    assert vae_prefix(1000, 880, 128, 32) == 896
    assert vae_prefix(1000, 888, 128, 32) == 992 and vae_prefix(1000, 889, 128, 32) == 1000


def test_compiled_estimator_falls_back_to_eager(monkeypatch, caplog):
    from levo_batch.decoder.flow import CompiledOrEager

    def broken(module, **kw):
        def fail(*args):
            raise RuntimeError("no triton here")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    layer = torch.nn.Linear(3, 2)
    guarded = CompiledOrEager(layer)
    x = torch.ones(1, 3)
    assert torch.equal(guarded(x), layer(x)) and guarded.failed
    assert "no triton here" in caplog.text
    assert torch.equal(guarded(x), layer(x))
