"""Load the LeVo 2 LM from an official release or an MLX conversion.

Accepted layouts:
- official release folder: `config.yaml` + `model.pt`, a raw state dict whose LM keys start with `audiolm.`
  (upstream's generate.py strips that prefix and ignores every other key; so do we). Read memory-mapped and
  converted tensor by tensor, so the file is never held twice in RAM.
- our MLX conversion (`levo_batch.lm.convert`): `config.json` + `model.safetensors`, or mlx-lm style shards
  `model-0000X-of-0000N.safetensors` + `model.safetensors.index.json`; float or 4/8-bit quantised.
- the public MLX conversions (ailuntx/SongGeneration-MLX, published as mlx-community/SongGeneration-v2-*):
  same files, their own key names (mapped by `PUBLIC_MLX_KEYS`) and config layout.

MLX parameter names are the official keys without `audiolm.`; official keys that inference never reads are
dropped (`UNUSED_OFFICIAL`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import yaml
from mlx.utils import tree_flatten

from levo_batch.errors import LevoError, first_few
from levo_batch.lm.config import AILUNTX_FORMAT, V1_FOLDERS, LMConfig, version_of_folder
from levo_batch.lm.model import LeVoLM

OFFICIAL_PREFIX = "audiolm."
UNUSED_OFFICIAL = (
    "layer2_emb.0.",
    "transformer.model.embed_tokens.",
    "transformer2.lm_head.",
    "transformer2.model.embed_tokens.",
    "out_norm.",
)
"""Official keys (prefix stripped) that upstream creates but never uses at inference."""

_COND = "condition_provider.conditioners."
PUBLIC_MLX_KEYS = (
    ("emb0.", "emb.0."),
    ("layer2_emb0.", None),
    ("layer2_emb1.", "layer2_emb.1."),
    ("layer2_emb2.", "layer2_emb.2."),
    ("prompt_audio_emb0.", _COND + "prompt_audio.emb.0."),
    ("prompt_audio_emb1.", _COND + "prompt_audio.emb.1."),
    ("prompt_audio_emb2.", _COND + "prompt_audio.emb.2."),
    ("prompt_audio_eot", _COND + "prompt_audio.EOT_emb"),
    ("prompt_audio_layer2_eot", _COND + "prompt_audio.layer2_EOT_emb"),
    ("description_output_proj.", _COND + "description.output_proj."),
    ("description_structure_emb.", _COND + "description.structure_emb."),
    ("type_info_output_proj.", _COND + "type_info.output_proj."),
    ("mlp.linear0.", "mlp.0."),
    ("mlp.linear2.", "mlp.2."),
    ("transformer_lm_head.", "transformer.lm_head."),
    ("linears0.", "linears.0."),
    ("linears1.", "linears.1."),
    ("transformer.embed_tokens.", None),
    ("transformer2.embed_tokens.", None),
    ("transformer.", "transformer.model."),
    ("transformer2.", "transformer2.model."),
)
"""Public MLX conversion key prefix -> our key prefix (None: unused, dropped); first match wins."""

DTYPES = {"fp32": mx.float32, "float32": mx.float32, "bf16": mx.bfloat16, "bfloat16": mx.bfloat16,
          "fp16": mx.float16, "float16": mx.float16}
_MIB = 1 << 20


class UnsafeCheckpointError(LevoError):
    """The official `model.pt` contains pickled code, not just tensors (never loaded with weights_only=False)."""


@dataclass
class Checkpoint:
    """An opened checkpoint: its config and a way to stream its tensors under our key names."""

    config: LMConfig
    source_format: str  # "official" | "mlx" | "mlx-public"
    files: list[Path]  # weight files, for error messages and the model id
    read: Callable[[mx.Dtype | None], Iterator[tuple[str, mx.array]]]

    def tensors(self, dtype: mx.Dtype | None = None) -> Iterator[tuple[str, mx.array]]:
        """Used tensors (unused keys dropped), floating ones cast to `dtype` when given."""
        return self.read(dtype)

    def describe(self) -> str:
        return ", ".join(str(f) for f in self.files)


@dataclass
class LoadedLM:
    """A ready model. `model_id` identifies weights + config (see `model_id`); `dtype` is the floating
    precision of the loaded parameters (scales for quantised layers), e.g. "bfloat16"."""

    model: LeVoLM
    config: LMConfig
    model_id: str
    source_format: str
    dtype: str


def load_lm(path: Path, *, dtype: str | None = None, version: str | None = None) -> LoadedLM:
    """Build `LeVoLM` and load a checkpoint into it (`dtype` None keeps the stored precision; `version` None
    follows the checkpoint, see `open_checkpoint`)."""
    ckpt = open_checkpoint(Path(path), version=version)
    weights = dict(ckpt.tensors(parse_dtype(dtype)))
    model = LeVoLM(ckpt.config)
    quantized = {k[: -len(".scales")] for k in weights if k.endswith(".scales")}
    if quantized and not ckpt.config.quantization:
        raise ValueError(f"{ckpt.describe()} holds quantised weights but its config has no `quantization` entry")
    if ckpt.config.quantization:
        nn.quantize(model, **ckpt.config.quantization, class_predicate=lambda p, _: p in quantized)
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    check_keys(ckpt, {k: v.shape for k, v in weights.items()}, expected)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    stored = next((v.dtype for k, v in weights.items() if k.endswith("norm.weight")), mx.float32)
    return LoadedLM(model, ckpt.config, model_id(ckpt), ckpt.source_format, str(stored).split(".")[-1])


def parse_dtype(dtype: str | None) -> mx.Dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def open_checkpoint(path: Path, version: str | None = None) -> Checkpoint:
    """Detect the layout of `path` and open it without reading the weights yet.

    The LM version (v1/v2 text conventions) is `version` when given; else an official folder follows
    upstream's folder-name rule and a conversion its `config.json` (`levo-batch convert` records it)."""
    if not path.is_dir():
        raise FileNotFoundError(f"LM checkpoint folder {path} does not exist")
    if (path / "config.json").is_file():
        return _open_mlx(path, version)
    if (path / "config.yaml").is_file():
        return _open_official(path, version or version_of_folder(path.name))
    raise FileNotFoundError(
        f"no LeVo LM checkpoint in {path}: expected config.yaml + model.pt (official release, e.g. "
        f"songgeneration_v2_large) or config.json + model.safetensors (MLX conversion, `levo-batch convert`)"
    )


def check_keys(ckpt: Checkpoint, got: dict[str, tuple], expected: dict[str, tuple]) -> None:
    """Fail naming the checkpoint files and the offending keys (name -> shape on both sides)."""
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if tuple(got[k]) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {first_few(missing, 8)}")
    if extra:
        problems.append(f"{len(extra)} unexpected keys: {first_few(extra, 8)}")
    if wrong:
        shapes = [f"{k} {tuple(got[k])} != {tuple(expected[k])}" for k in wrong]
        problems.append(f"shape mismatches: {first_few(shapes, 8)}")
    if problems:
        raise ValueError(
            f"{ckpt.describe()} does not match a LeVo LM of its config ({ckpt.source_format} layout): "
            + "; ".join(problems)
            + ". Re-download or re-convert the checkpoint; config and weights must come from the same release. "
            + f"It was read as a {ckpt.config.version} checkpoint (v1: folders named {', '.join(V1_FOLDERS)}); "
            + "if that is wrong, say which with --lm-version."
        )


def model_id(ckpt: Checkpoint) -> str:
    """16 hex digits of sha256 over the config and, per weight file, its name, size, first and last MiB.

    Reading 2 MiB per file keeps this instant on 5-10 GB checkpoints while any re-conversion or different
    release changes it (sizes and safetensors headers differ). The load dtype is not part of it.
    """
    h = hashlib.sha256(json.dumps(ckpt.config.to_mlx(), sort_keys=True).encode())
    for f in sorted(ckpt.files):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(_MIB))
            fh.seek(max(size - _MIB, 0))
            h.update(fh.read(_MIB))
    return h.hexdigest()[:16]


def official_shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """Every key of an official `model.pt` (unused ones included) with its shape."""
    d, i, rows, outs = cfg.dim, cfg.intermediate_size, cfg.code_size + 2, cfg.code_size + 1
    shapes: dict[str, tuple[int, ...]] = {"emb.0.weight": (rows, d)}
    shapes.update({f"layer2_emb.{k}.weight": (rows, d) for k in range(cfg.code_depth)})
    for name, layers in (("transformer", cfg.num_layers), ("transformer2", cfg.num_layers_sub)):
        for n in range(layers):
            p = f"{name}.model.layers.{n}."
            shapes.update({f"{p}self_attn.{x}_proj.weight": (d, d) for x in "qkvo"})
            shapes.update({f"{p}mlp.gate_proj.weight": (i, d), f"{p}mlp.up_proj.weight": (i, d)})
            shapes.update({f"{p}mlp.down_proj.weight": (d, i)})
            shapes.update({f"{p}input_layernorm.weight": (d,), f"{p}post_attention_layernorm.weight": (d,)})
        shapes.update({f"{name}.model.norm.weight": (d,), f"{name}.model.embed_tokens.weight": (outs, d)})
        shapes[f"{name}.lm_head.weight"] = (outs, d)
    shapes.update({"mlp.0.weight": (d, 2 * d), "mlp.0.bias": (d,), "mlp.2.weight": (d, d), "mlp.2.bias": (d,)})
    shapes.update({f"linears.{k}.weight": (outs, d) for k in range(cfg.code_depth - 1)})
    shapes.update({"out_norm.weight": (d,), "out_norm.bias": (d,)})
    shapes.update({
        _COND + "description.output_proj.weight": (cfg.lyrics_vocab, d),
        _COND + "description.structure_emb.weight": (cfg.structure_vocab, d),
        _COND + "type_info.output_proj.weight": (cfg.description_vocab, d),
        _COND + "prompt_audio.EOT_emb": (1, d),
        _COND + "prompt_audio.layer2_EOT_emb": (1, d),
    })
    shapes.update({_COND + f"prompt_audio.emb.{k}.weight": (rows, d) for k in range(cfg.code_depth)})
    return shapes


def used_shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """The unquantised MLX parameter set: official keys minus the unused ones."""
    return {k: v for k, v in official_shapes(cfg).items() if not k.startswith(UNUSED_OFFICIAL)}


def _open_official(path: Path, version: str) -> Checkpoint:
    cfg = LMConfig.from_upstream(yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")), version)
    pt = path / "model.pt"
    if not pt.is_file():
        raise FileNotFoundError(f"{pt} is missing: an official checkpoint folder holds config.yaml and model.pt")

    def read(dtype: mx.Dtype | None) -> Iterator[tuple[str, mx.array]]:
        import torch

        try:
            state = torch.load(pt, mmap=True, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"{pt} holds more than plain tensors (a pickled object: {str(e).splitlines()[-1][:120]}), which we "
                f"refuse to execute; re-download the official model.pt") from e
        if not any(k.startswith(OFFICIAL_PREFIX) for k in state):
            raise ValueError(f"{pt} has no '{OFFICIAL_PREFIX}*' keys (found e.g. {first_few(sorted(state), 8)}); "
                             f"is this the LM checkpoint (model.pt of a SongGeneration release)?")
        for key in list(state):
            name = key[len(OFFICIAL_PREFIX):]
            if key.startswith(OFFICIAL_PREFIX) and not name.startswith(UNUSED_OFFICIAL):
                yield name, _from_torch(state.pop(key), dtype)

    return Checkpoint(cfg, "official", [pt], read)


def _open_mlx(path: Path, version: str | None) -> Checkpoint:
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    public = raw.get("format") == AILUNTX_FORMAT or "runtime" in raw
    cfg = LMConfig.from_mlx(raw)
    if public and (path / "config.official.yaml").is_file():
        official = yaml.safe_load((path / "config.official.yaml").read_text(encoding="utf-8"))
        cfg = replace(LMConfig.from_upstream(official, cfg.version), quantization=cfg.quantization)
    if version is not None and version != cfg.version:
        cfg = cfg.with_version(version)
    files = _weight_files(path)
    rename = _public_key if public else (lambda k: k)

    def read(dtype: mx.Dtype | None) -> Iterator[tuple[str, mx.array]]:
        for f in files:
            for key, value in mx.load(str(f)).items():
                if (name := rename(key)) is not None:
                    yield name, _cast(value, dtype)

    return Checkpoint(cfg, "mlx-public" if public else "mlx", files, read)


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files = [path / n for n in names]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{path} has config.json but no weights: expected model.safetensors or model.safetensors.index.json "
            f"with its model-0000X-of-0000N.safetensors shards"
        )
    if missing := [f.name for f in files if not f.is_file()]:
        raise FileNotFoundError(f"{index} lists shards that are missing from {path}: {', '.join(missing)}")
    return files


def _public_key(key: str) -> str | None:
    for theirs, ours in PUBLIC_MLX_KEYS:
        if key.startswith(theirs):
            return None if ours is None else ours + key[len(theirs):]
    return key


def _from_torch(t, dtype: mx.Dtype | None) -> mx.array:
    """One tensor to MLX; numpy has no bfloat16, so those travel as raw 16-bit words."""
    import torch

    if t.dtype == torch.bfloat16:
        value = mx.array(t.view(torch.uint16).numpy()).view(mx.bfloat16)
    else:
        value = mx.array(t.numpy())
    value = _cast(value, dtype)
    mx.eval(value)
    return value


def _cast(value: mx.array, dtype: mx.Dtype | None) -> mx.array:
    if dtype is None or not mx.issubdtype(value.dtype, mx.floating):
        return value
    return value.astype(dtype)
