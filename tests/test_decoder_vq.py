"""SingleVQ against upstream's recorded RVQ outputs (decoder_tiny weights, encoder_tiny unit arrays)."""

import numpy as np
import pytest
import torch
from fixture_meta import decoder_arrays, decoder_meta
from safetensors.torch import save_file

from levo_batch.codec.vq import SingleVQ
from levo_batch.codec.weights import SafetensorsDict

STREAMS = [("vocal", "rvq_bestrq_emb."), ("bgm", "rvq_bestrq_bgm_emb.")]


@pytest.fixture(scope="module")
def septoken(fixtures):
    return SafetensorsDict(fixtures / "decoder_tiny" / "septoken_model.safetensors")


@pytest.fixture(scope="module")
def unit(encode_case):
    return encode_case


@pytest.mark.parametrize("name,prefix", STREAMS)
def test_to_codes_matches_upstream_encode(septoken, unit, name, prefix):
    vq = SingleVQ.from_state_dict(septoken, prefix)
    codes = vq.to_codes(torch.from_numpy(unit[f"unit_sep_{name}_z"]))
    assert codes.dtype == torch.int64 and codes.shape == unit[f"unit_sep_{name}_codes"][:, 0].shape
    np.testing.assert_array_equal(codes.numpy(), unit[f"unit_sep_{name}_codes"][:, 0])


@pytest.mark.parametrize("name,prefix", STREAMS)
def test_from_codes_matches_upstream_dequantisation(septoken, unit, name, prefix):
    vq = SingleVQ.from_state_dict(septoken, prefix)
    feats = vq.embed(torch.from_numpy(unit[f"unit_sep_{name}_codes"][:, 0])).transpose(1, 2)
    assert feats.shape == unit[f"unit_sep_{name}_from_codes"].shape
    assert vq.dim == decoder_meta()["septoken"]["rvq"]["input_dim"]
    np.testing.assert_allclose(feats.numpy(), unit[f"unit_sep_{name}_from_codes"], atol=1e-5, rtol=1e-4)


def test_window_embeddings_match_decoder_fixture(septoken):
    case = decoder_arrays(decoder_meta()["cases"][0])
    for stream, prefix in [("vocal", "rvq_bestrq_emb."), ("bgm", "rvq_bestrq_bgm_emb.")]:
        vq = SingleVQ.from_state_dict(septoken, prefix)
        feats = vq.embed(torch.from_numpy(case[f"d0_chunk0_codes_{stream}"][:, 0])).transpose(1, 2)
        np.testing.assert_allclose(feats.numpy(), case[f"d0_chunk0_emb_{stream}"], atol=1e-5, rtol=1e-4)


def test_missing_keys_name_the_file(tmp_path, septoken):
    kept = {k: septoken[k] for k in septoken if k.startswith("rvq_bestrq_emb.") and "out_proj.weight_g" not in k}
    path = tmp_path / "model_2.safetensors"
    save_file(kept, str(path))
    with pytest.raises(KeyError, match=r"model_2.safetensors.*rvq_bestrq_emb.quantizers.0.out_proj.weight_g"):
        SingleVQ.from_state_dict(SafetensorsDict(path), "rvq_bestrq_emb.")


def test_half_precision_checkpoint_loads_and_casts(septoken):
    half = {k: septoken[k].half() for k in septoken if k.startswith("rvq_bestrq_emb.")}
    vq = SingleVQ.from_state_dict(half, "rvq_bestrq_emb.", dtype=torch.float32)
    assert vq.codebook.dtype == torch.float32
    ref = SingleVQ.from_state_dict(septoken, "rvq_bestrq_emb.")
    codes = torch.arange(0, 16384, 97)[None]
    np.testing.assert_allclose(vq.embed(codes).numpy(), ref.embed(codes).numpy(), atol=1e-2)
