"""Write tiny LM checkpoints in the real file formats, for everyone's tests (no network, no real weights).

- `write_official_checkpoint`: random weights as an official release (`config.yaml` + raw-state-dict
  `model.pt` with every `audiolm.*` key, unused ones included).
- `write_fixture_official_checkpoint`: the golden lm_tiny weights in that same layout, so parity tests can
  go through the official-format loader.
- `write_public_mlx_checkpoint`: an official checkpoint re-laid out as the public ailuntx/mlx-community MLX
  conversions are (their key names, their config.json, unused keys kept as they keep them).
- `copy_tokenizer`: the Qwen2 stand-in where `RuntimePaths.tokenizer_dir` looks for it.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from levo_batch.lm.config import LMConfig
from levo_batch.lm.loading import OFFICIAL_PREFIX, official_shapes
from levo_batch.runtime import RuntimePaths
from levo_batch.text import STRUCTURE_TAGS

TINY_UPSTREAM_CONFIG = {
    "max_dur": 150,
    "prompt_len": 10,
    "audio_tokenizer_frame_rate": 25,
    "sample_rate": 48000,
    "lm": {
        "lm_type": "Llama", "dim": 64, "intermediate_size": 128, "num_heads": 4, "num_layers": 2,
        "num_layers_sub": 1, "code_depth": 3, "code_size": 16384, "max_position_embeddings": 10000,
        "max_position_embeddings_sub": 10000, "rope_theta": 500000.0, "rope_theta_sub": 500000.0,
        "dropout": 0.0, "activation": "gelu", "norm_first": True, "norm": "layer_norm", "use_flash_attn_2": False,
    },
    "codebooks_pattern": {"modeling": "delay", "delay": {"delays": [0, 250, 250], "flatten_first": 0,
                                                         "empty_initial": 0}},
    "classifier_free_guidance": {"training_dropout": 0.15, "inference_coef": 1.5},
    "fuser": {"sum": [], "prepend": ["description", "prompt_audio", "type_info"]},
    "conditioners": {
        "description": {"model": "QwTokenizer", "QwTokenizer": {
            "token_path": "third_party/Qwen2-7B", "max_len": 600, "add_token_list": list(STRUCTURE_TAGS)}},
        "prompt_audio": {"model": "qt_embedding",
                         "qt_embedding": {"code_size": 16384, "code_depth": 3, "max_len": 252}},
        "type_info": {"model": "QwTextTokenizer",
                      "QwTextTokenizer": {"token_path": "third_party/Qwen2-7B", "max_len": 100}},
    },
}
"""Upstream's config.yaml layout with tiny sizes: dim 64 so 32/64-wide quantisation groups apply everywhere."""


def upstream_config(cfg_overrides: dict | None = None) -> dict:
    """`TINY_UPSTREAM_CONFIG` with `cfg_overrides` merged in (nested dicts merge, other values replace)."""
    return _merge(copy.deepcopy(TINY_UPSTREAM_CONFIG), cfg_overrides or {})


def write_official_checkpoint(dir: Path, cfg_overrides: dict | None = None, seed: int = 0,
                              version: str = "v2") -> Path:
    """Random `config.yaml` + `model.pt` (raw state dict, `audiolm.` keys) in `dir`; returns `dir`.

    `version` "v1" writes a v1 release's tables (no description tags); name the folder as upstream's rule
    expects (e.g. `songgeneration_base`) to have it loaded as v1."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    raw = upstream_config(cfg_overrides)
    cfg = LMConfig.from_upstream(raw, version)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(cfg).items():
        if key.endswith("norm.weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            value = 0.1 * torch.randn(shape, generator=gen)
        else:
            value = torch.randn(shape, generator=gen) / np.sqrt(shape[-1])
        state[OFFICIAL_PREFIX + key] = value
    (dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    torch.save(state, dir / "model.pt")
    return dir


def write_fixture_official_checkpoint(dir: Path, fixtures: Path) -> Path:
    """lm_tiny's `config.yaml` + its `model.safetensors` saved as an official `model.pt`; returns `dir`."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixtures / "lm_tiny" / "config.yaml", dir / "config.yaml")
    torch.save(load_file(fixtures / "lm_tiny" / "model.safetensors"), dir / "model.pt")
    return dir


def write_public_mlx_checkpoint(dir: Path, official: Path, *, shards: int = 1, bits: int | None = None,
                                official_config: bool = True) -> Path:
    """`official` re-laid out as ailuntx/SongGeneration-MLX writes it: fp32, optionally sharded or quantised,
    with its `config.official.yaml` copy unless `official_config` is False.

    Like its `nn.quantize(model)`, quantisation covers every Linear/Embedding, unused tables included.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((official / "config.yaml").read_text(encoding="utf-8"))
    weights = {}
    for key, value in torch.load(official / "model.pt", weights_only=True).items():
        name = _public_name(key[len(OFFICIAL_PREFIX):])
        if name is None:
            continue
        value = mx.array(value.numpy())
        if bits and name.endswith(".weight") and value.ndim == 2:
            base = name[: -len("weight")]
            weights[name], weights[base + "scales"], weights[base + "biases"] = mx.quantize(value, 64, bits)
        else:
            weights[name] = value
    lm = raw["lm"]
    runtime = {"hidden_size": lm["dim"], "intermediate_size": lm["intermediate_size"], "num_heads": lm["num_heads"],
               "num_layers": lm["num_layers"], "num_layers_sub": lm["num_layers_sub"], "code_depth": lm["code_depth"],
               "code_size": lm["code_size"], "prompt_len": raw["prompt_len"],
               "frame_rate": raw["audio_tokenizer_frame_rate"], "rope_theta": lm["rope_theta"],
               "rope_theta_sub": lm["rope_theta_sub"], "cfg_coef": 1.5}
    config = {"format": "songgeneration-mlx-audiolm", "variant": "tiny", "precision": "fp32", "runtime": runtime}
    if bits:
        config["quantization"] = {"bits": bits, "group_size": 64, "mode": "affine"}
    (dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if official_config:
        shutil.copy(official / "config.yaml", dir / "config.official.yaml")
    if shards == 1:
        mx.save_safetensors(str(dir / "model.safetensors"), weights)
        return dir
    weight_map = {}
    for i, part in enumerate(np.array_split(np.array(sorted(weights)), shards)):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        mx.save_safetensors(str(dir / name), {str(k): weights[str(k)] for k in part})
        weight_map.update({str(k): name for k in part})
    (dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")
    return dir


def copy_tokenizer(fixtures: Path, runtime_dir: Path) -> Path:
    """Put the Qwen2 stand-in at `RuntimePaths(runtime_dir).tokenizer_dir`; returns that folder."""
    target = RuntimePaths(Path(runtime_dir)).tokenizer_dir
    shutil.copytree(fixtures / "qwen2_tokenizer", target, dirs_exist_ok=True)
    return target


def _public_name(key: str) -> str | None:
    """The public converter's renames, written out independently of the loader's table."""
    cond = "condition_provider.conditioners."
    fixed = {
        "emb.0.weight": "emb0.weight",
        "layer2_emb.0.weight": "layer2_emb0.weight",
        "layer2_emb.1.weight": "layer2_emb1.weight",
        "layer2_emb.2.weight": "layer2_emb2.weight",
        cond + "prompt_audio.EOT_emb": "prompt_audio_eot",
        cond + "prompt_audio.layer2_EOT_emb": "prompt_audio_layer2_eot",
        cond + "prompt_audio.emb.0.weight": "prompt_audio_emb0.weight",
        cond + "prompt_audio.emb.1.weight": "prompt_audio_emb1.weight",
        cond + "prompt_audio.emb.2.weight": "prompt_audio_emb2.weight",
        cond + "description.output_proj.weight": "description_output_proj.weight",
        cond + "description.structure_emb.weight": "description_structure_emb.weight",
        cond + "type_info.output_proj.weight": "type_info_output_proj.weight",
        "mlp.0.weight": "mlp.linear0.weight", "mlp.0.bias": "mlp.linear0.bias",
        "mlp.2.weight": "mlp.linear2.weight", "mlp.2.bias": "mlp.linear2.bias",
        "transformer.lm_head.weight": "transformer_lm_head.weight",
        "linears.0.weight": "linears0.weight", "linears.1.weight": "linears1.weight",
    }
    if key in fixed:
        return fixed[key]
    if key.startswith("transformer.model."):
        return "transformer." + key[len("transformer.model."):]
    if key.startswith("transformer2.model.embed_tokens.") or key.startswith("transformer2.lm_head."):
        return None
    if key.startswith("transformer2.model."):
        return "transformer2." + key[len("transformer2.model."):]
    return None


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base
