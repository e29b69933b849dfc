"""Convert an LM checkpoint to the MLX layout: `config.json` + safetensors (mlx-lm style shards), optional 4/8-bit.

Tensors stream one at a time from the source into shards of at most `max_shard_bytes`, so peak memory is
about one shard, never the whole model twice. Unused official keys are not written. Quantisation is applied
per tensor exactly as `mlx.nn.quantize` lays it out (`.weight` packed, `.scales`, `.biases`), to every
Linear/Embedding weight whose input dimension is a multiple of `group_size`; the loader re-creates the
quantised layers from the `.scales` keys present, so writer and reader cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx

from levo_batch.lm.loading import Checkpoint, check_keys, open_checkpoint, parse_dtype, used_shapes

SHARD_BYTES = 5 << 30
OUTPUT_NAMES = ("config.json", "model.safetensors", "model.safetensors.index.json")


def convert(
    src: Path,
    dst: Path,
    *,
    dtype: str = "bf16",
    quantize: int | None = None,
    group_size: int = 64,
    max_shard_bytes: int = SHARD_BYTES,
    version: str | None = None,
) -> Path:
    """Write the MLX conversion of `src` (any layout `load_lm` reads, unquantised) into `dst`; returns `dst`.

    `version` overrides the LM version read from `src` (see `open_checkpoint`); the result records it."""
    src, dst = Path(src), Path(dst)
    if quantize not in (None, 4, 8):
        raise ValueError(f"quantize must be 4 or 8 bits (or None), got {quantize}")
    target = parse_dtype(dtype)
    ckpt = open_checkpoint(src, version)
    if ckpt.config.quantization:
        raise ValueError(f"{src} is already quantised; convert from the official release or an unquantised conversion")
    dst.mkdir(parents=True, exist_ok=True)
    if taken := [n for n in OUTPUT_NAMES if (dst / n).exists()] + [p.name for p in dst.glob("model-*.safetensors")]:
        raise FileExistsError(f"{dst} already holds a conversion ({', '.join(taken)}); choose an empty folder")
    _write_shards(ckpt, dst, target, quantize, group_size, max_shard_bytes)
    q = {"bits": quantize, "group_size": group_size} if quantize else None
    config = replace(ckpt.config, quantization=q).to_mlx()
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dst


def quantizable(key: str, value: mx.array, group_size: int) -> bool:
    """2-D `.weight` tensors of the LM are exactly its Linear and Embedding weights."""
    return key.endswith(".weight") and value.ndim == 2 and value.shape[-1] % group_size == 0


def _write_shards(
    ckpt: Checkpoint, dst: Path, dtype: mx.Dtype, bits: int | None, group_size: int, max_bytes: int
) -> None:
    """Stream tensors into temporary shards, check the key set, then give the shards their final names."""
    shapes: dict[str, tuple[int, ...]] = {}
    shards: list[Path] = []
    weight_map: dict[str, str] = {}
    pending: dict[str, mx.array] = {}
    size = 0

    def flush() -> None:
        nonlocal pending, size
        shards.append(dst / f".shard-{len(shards)}.safetensors")
        mx.save_safetensors(str(shards[-1]), pending, metadata={"format": "mlx"})
        weight_map.update({k: shards[-1].name for k in pending})
        pending, size = {}, 0

    try:
        for key, value in ckpt.tensors(dtype):
            shapes[key] = tuple(value.shape)
            if bits and quantizable(key, value, group_size):
                w, scales, biases = mx.quantize(value, group_size=group_size, bits=bits)
                base = key[: -len("weight")]
                parts = {key: w, base + "scales": scales, base + "biases": biases}
            else:
                parts = {key: value}
            nbytes = sum(p.nbytes for p in parts.values())
            if pending and size + nbytes > max_bytes:
                flush()
            pending.update(parts)
            size += nbytes
        if pending:
            flush()
        check_keys(ckpt, shapes, used_shapes(ckpt.config))
    except BaseException:
        for shard in shards:
            shard.unlink(missing_ok=True)
        raise
    name_shards(dst, shards, weight_map)


def name_shards(dst: Path, shards: list[Path], weight_map: dict[str, str]) -> None:
    """One shard is `model.safetensors`; several are `model-0000X-of-0000N.safetensors` plus the index."""
    if len(shards) == 1:
        shards[0].rename(dst / "model.safetensors")
        return
    names = {s.name: f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i, s in enumerate(shards)}
    total = 0
    for shard in shards:
        total += shard.stat().st_size
        shard.rename(dst / names[shard.name])
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in sorted(weight_map.items())}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
