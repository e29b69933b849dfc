"""LM checkpoint loading (official model.pt, our MLX conversions, the public MLX layout) and conversion."""

import json
import re

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import yaml
from fixture_meta import lm_arrays, lm_cases
from mlx.utils import tree_flatten

from levo_batch.lm.conditioners import condition_inputs
from levo_batch.lm.config import V2_RELEASE_MAX_DUR, LMConfig
from levo_batch.lm.convert import convert
from levo_batch.lm.loading import UNUSED_OFFICIAL, load_lm, official_shapes, open_checkpoint
from levo_batch.lm.model import LeVoLM
from levo_batch.lm.tokenizer import TextTokenizers
from levo_batch.runtime import RuntimePaths
from lm_checkpoints import (
    copy_tokenizer,
    write_fixture_official_checkpoint,
    write_official_checkpoint,
    write_public_mlx_checkpoint,
)

SMALL = {"lm": {"dim": 32, "intermediate_size": 64, "num_heads": 2}}
Q_PROJ = "transformer.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def reference(official):
    return load_lm(official)


def _params(loaded):
    return dict(tree_flatten(loaded.model.parameters()))


def _saved_keys(folder):
    return {k for f in folder.glob("*.safetensors") for k in mx.load(str(f))}


def test_official_layout_matches_upstream_state_dict(fixtures):
    cases = lm_cases()
    cfg = LMConfig.from_upstream(yaml.safe_load((fixtures / "lm_tiny" / "config.yaml").read_text()))
    assert {"audiolm." + k: list(v) for k, v in official_shapes(cfg).items()} == cases["state_dict_keys"]


def test_load_official(official, reference):
    state = torch.load(official / "model.pt", weights_only=True)
    params = _params(reference)
    assert isinstance(reference.model, LeVoLM) and reference.source_format == "official"
    assert reference.config.dim == 64 and reference.dtype == "float32"
    assert set(params) == {k[len("audiolm."):] for k in state} - {
        k[len("audiolm."):] for k in state if k[len("audiolm."):].startswith(UNUSED_OFFICIAL)}
    for key in (Q_PROJ + ".weight", "condition_provider.conditioners.prompt_audio.EOT_emb", "mlp.0.bias"):
        np.testing.assert_array_equal(np.array(params[key]), state["audiolm." + key].numpy())
    assert len(reference.model_id) == 16 and load_lm(official).model_id == reference.model_id


def test_model_id_changes_with_weights(tmp_path, reference):
    other = write_official_checkpoint(tmp_path / "other", seed=1)
    assert load_lm(other).model_id != reference.model_id


def test_load_dtype_override(official):
    loaded = load_lm(official, dtype="bf16")
    assert loaded.dtype == "bfloat16" and _params(loaded)[Q_PROJ + ".weight"].dtype == mx.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_lm(official, dtype="fp8")


@pytest.mark.parametrize("stored, name", [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
def test_half_precision_model_pt(tmp_path, stored, name):
    ckpt = write_official_checkpoint(tmp_path / "off", SMALL)
    state = {k: v.to(stored) for k, v in torch.load(ckpt / "model.pt", weights_only=True).items()}
    torch.save(state, ckpt / "model.pt")
    loaded = load_lm(ckpt)
    got = _params(loaded)[Q_PROJ + ".weight"]
    assert loaded.dtype == name and got.dtype == getattr(mx, name)
    want = state["audiolm." + Q_PROJ + ".weight"].float().numpy()
    np.testing.assert_array_equal(np.array(got.astype(mx.float32)), want)


def test_fixture_weights_reproduce_upstream_logits(tmp_path, fixtures):
    loaded = load_lm(write_fixture_official_checkpoint(tmp_path / "fx", fixtures))
    runtime = RuntimePaths(tmp_path / "runtime")
    tok = TextTokenizers.from_dir(copy_tokenizer(fixtures, runtime.root))
    assert (runtime.tokenizer_dir / "tokenizer.json").is_file()
    cases = lm_cases()
    job = cases["jobs"][1]
    arrays = lm_arrays(job["name"])
    g = job["codeclm_generate_inputs"]
    inputs = condition_inputs(tok, loaded.config, g["lyrics"][0], g["descriptions"][0], arrays["prompt_tokens"][0])
    p1, p2 = loaded.model.condition_provider.prefix(inputs)
    codes = mx.array(np.repeat(arrays["tf_sequence"], 2, axis=0))
    np.testing.assert_allclose(np.array(loaded.model(p1, p2, codes)), arrays["tf_logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype, shard_bytes", [("fp32", 5 << 30), ("fp32", 20 << 20), ("bf16", 5 << 30)])
def test_float_conversions(tmp_path, official, reference, dtype, shard_bytes):
    dst = convert(official, tmp_path / "mlx", dtype=dtype, max_shard_bytes=shard_bytes)
    loaded = load_lm(dst)
    config = json.loads((dst / "config.json").read_text())
    assert config["format"] == "levo-batch-lm" and "quantization" not in config
    assert LMConfig.from_mlx(config) == reference.config == loaded.config
    assert loaded.source_format == "mlx" and loaded.dtype == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    if shard_bytes < 5 << 30:
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        shards = sorted(p.name for p in dst.glob("model-*.safetensors"))
        assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert sorted(set(index["weight_map"].values())) == shards and not (dst / "model.safetensors").exists()
    got, want = _params(loaded), _params(reference)
    assert set(got) == set(want) == _saved_keys(dst)
    tol = 0 if dtype == "fp32" else 1e-2
    for key in want:
        np.testing.assert_allclose(np.array(got[key].astype(mx.float32)), np.array(want[key]), atol=tol, rtol=tol)


@pytest.mark.parametrize("bits, group_size, tol", [(4, 32, 0.3), (8, 64, 0.03)])
def test_quantized_conversions(tmp_path, official, reference, bits, group_size, tol):
    dst = convert(official, tmp_path / "q", quantize=bits, group_size=group_size)
    assert json.loads((dst / "config.json").read_text())["quantization"] == {"bits": bits, "group_size": group_size}
    loaded = load_lm(dst)
    model = loaded.model
    assert loaded.config.quantization == {"bits": bits, "group_size": group_size}
    assert isinstance(model.transformer.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(model.condition_provider.conditioners["description"].output_proj, nn.QuantizedEmbedding)
    assert isinstance(model.transformer.model.norm, nn.RMSNorm)
    saved = _saved_keys(dst)
    assert Q_PROJ + ".scales" in saved and not any(k.startswith(UNUSED_OFFICIAL) for k in saved)
    x = mx.random.normal((3, 64), key=mx.random.key(0))
    got = model.transformer.model.layers[0].self_attn.q_proj(x)
    want = reference.model.transformer.model.layers[0].self_attn.q_proj(x)
    assert float(mx.abs(got - want).max()) < tol
    ids = mx.array([[151644, 151646, 13]])
    emb = model.condition_provider.conditioners["description"].output_proj
    ref_emb = reference.model.condition_provider.conditioners["description"].output_proj
    assert float(mx.abs(emb(ids) - ref_emb(ids)).max()) < tol


@pytest.mark.parametrize("layout", [{}, {"shards": 3}, {"bits": 4}])
def test_public_mlx_layout(tmp_path, official, reference, layout):
    loaded = load_lm(write_public_mlx_checkpoint(tmp_path / "pub", official, **layout))
    assert loaded.source_format == "mlx-public"
    assert loaded.config == LMConfig.from_mlx({**reference.config.to_mlx(), "quantization": loaded.config.quantization})
    got, want = _params(loaded), _params(reference)
    if "bits" in layout:
        assert loaded.config.quantization == {"bits": 4, "group_size": 64}
        assert isinstance(loaded.model.condition_provider.conditioners["type_info"].output_proj, nn.QuantizedEmbedding)
        return
    assert set(got) == set(want)
    assert all(bool(mx.array_equal(got[k], want[k])) for k in want)


def test_convert_rejects_bad_requests(tmp_path, official):
    with pytest.raises(ValueError, match="4 or 8 bits"):
        convert(official, tmp_path / "a", quantize=3)
    quantized = convert(official, tmp_path / "q", quantize=8)
    with pytest.raises(ValueError, match="already quantised"):
        convert(quantized, tmp_path / "b")
    with pytest.raises(FileExistsError, match="config.json, model.safetensors"):
        convert(official, quantized)


def test_missing_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected config.yaml \\+ model.pt"):
        load_lm(tmp_path)
    ckpt = write_official_checkpoint(tmp_path / "off", SMALL)
    (ckpt / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt is missing"):
        load_lm(ckpt)
    mlx_dir = tmp_path / "mlx"
    mlx_dir.mkdir()
    (mlx_dir / "config.json").write_text(json.dumps({"dim": 32, "intermediate_size": 64, "num_heads": 2,
                                                     "num_layers": 2, "num_layers_sub": 1}))
    with pytest.raises(FileNotFoundError, match="no weights: expected model.safetensors"):
        load_lm(mlx_dir)


def test_missing_shard_is_named(tmp_path):
    dst = convert(write_official_checkpoint(tmp_path / "off", SMALL), tmp_path / "mlx", max_shard_bytes=8 << 20)
    shard = sorted(dst.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing from .*: {shard.name}"):
        load_lm(dst)


def test_incomplete_or_foreign_state_dicts(tmp_path):
    ckpt = write_official_checkpoint(tmp_path / "off", SMALL)
    state = torch.load(ckpt / "model.pt", weights_only=True)
    del state["audiolm.transformer2.model.norm.weight"]
    state["audiolm.transformer.extra.weight"] = torch.zeros(2)
    state["audiotokenizer.encoder.weight"] = torch.zeros(2)
    torch.save(state, ckpt / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt does not match.*1 missing keys: transformer2.model.norm.weight"
                                         r".*1 unexpected keys: transformer.extra.weight"):
        load_lm(ckpt)
    with pytest.raises(ValueError, match="1 missing keys: transformer2.model.norm.weight"):
        convert(ckpt, tmp_path / "mlx")
    assert not list((tmp_path / "mlx").glob("*.safetensors")) and not list((tmp_path / "mlx").glob(".shard*"))
    torch.save({"state_dict": {}}, ckpt / "model.pt")
    with pytest.raises(ValueError, match="no 'audiolm.\\*' keys"):
        load_lm(ckpt)


def test_quantized_weights_need_quantization_config(tmp_path, official):
    dst = convert(official, tmp_path / "q", quantize=4)
    config = json.loads((dst / "config.json").read_text())
    del config["quantization"]
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds quantised weights but its config has no `quantization`"):
        load_lm(dst)


def config_of(path):
    return open_checkpoint(path).config


def test_max_dur_is_read_from_every_format(tmp_path, official):
    """The release's own max_dur wherever it is recorded; public conversions without it are v2 releases."""
    long = write_official_checkpoint(tmp_path / "long", {"max_dur": 270})
    convert(long, tmp_path / "ours", dtype="fp32")
    assert config_of(official).max_dur == 150.0
    assert config_of(long).max_dur == 270.0
    assert config_of(tmp_path / "ours").max_dur == 270.0
    assert config_of(write_public_mlx_checkpoint(tmp_path / "pub", official)).max_dur == 150.0
    bare = write_public_mlx_checkpoint(tmp_path / "bare", official, official_config=False)
    assert not (bare / "config.official.yaml").exists()
    assert config_of(bare).max_dur == V2_RELEASE_MAX_DUR == 270.0


def test_broken_configs_are_reported_in_one_line(tmp_path):
    from levo_batch.assets import open_lm_checkpoint

    (tmp_path / "config.yaml").write_text("max_dur: 150\n")
    (tmp_path / "model.pt").write_bytes(b"")
    ckpt, error = open_lm_checkpoint(tmp_path)
    assert ckpt is None
    assert re.search(r"config.yaml has no `[\w.]+` entry; is this a SongGeneration LM config\?", error), error


def test_v1_release_loads_by_folder_name_and_keeps_its_version_through_convert(tmp_path):
    """Upstream's rule: songgeneration_base/_base_new/_base_full/_large are v1 (same LM, no description tags)."""
    v1 = write_official_checkpoint(tmp_path / "SongGeneration-Base-New", version="v1")
    loaded = load_lm(v1)
    assert loaded.config.version == "v1" and loaded.config.description_vocab == 151646
    assert loaded.model.condition_provider.conditioners["type_info"].output_proj.weight.shape == (151646, 64)
    with pytest.raises(ValueError, match="read as a v2 checkpoint .*--lm-version"):
        load_lm(v1, version="v2")
    convert(v1, tmp_path / "mlx", dtype="fp32")
    assert json.loads((tmp_path / "mlx" / "config.json").read_text())["version"] == "v1"
    assert load_lm(tmp_path / "mlx").config == loaded.config
    renamed = write_official_checkpoint(tmp_path / "my_v1", version="v1")
    assert config_of(renamed).version == "v2" and load_lm(renamed, version="v1").config.version == "v1"


def test_v2_conversions_keep_their_config_json(official, tmp_path):
    convert(official, tmp_path / "mlx", dtype="fp32")
    assert "version" not in json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert config_of(tmp_path / "mlx").version == "v2"
