"""Random-weight checkpoints in the exact file formats the product loads, for benchmarks (no real weights needed).

Speed depends on shapes, dtypes and file layout, not on weight values, so a benchmark can run the real
loaders and kernels on random weights of the real geometry. Safetensors files are written tensor by tensor
(`write_safetensors` streams), so building a 10 GB LM never holds more than one tensor in memory; only the
VAE `.ckpt` (a 0.7 GB torch pickle) is assembled in memory.

- `write_lm_checkpoint`: an MLX conversion as `levo-batch convert` writes it (`config.json` + bf16 safetensors,
  sharded at 5 GB, optionally 4/8-bit quantised), for `lm_config("tiny"|"medium"|"large")`.
- `write_songs`: a test100-like jsonl of English and Chinese songs with upstream's section structure.
- `write_runtime`: the upstream runtime folder (`RuntimePaths` layout): Qwen2 tokenizer stand-in, septoken
  decoder safetensors, VAE json + `.ckpt`, at real size or at the tiny fixture size.

Used by bench/e2e.py; other bench scripts can `from common import ...` (scripts in bench/ see each other).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import orjson

if TYPE_CHECKING:
    from levo_batch.lm.config import LMConfig
    from levo_batch.runtime import RuntimePaths

REPO = Path(__file__).resolve().parents[1]
FIXTURES_ENV = "LEVO_FIXTURES"
LM_SIZES = {
    "tiny": dict(dim=64, intermediate_size=128, num_heads=4, num_layers=2, num_layers_sub=1),
    "medium": dict(dim=1536, intermediate_size=8960, num_heads=12, num_layers=28, num_layers_sub=12),
    "large": dict(dim=2048, intermediate_size=11008, num_heads=16, num_layers=36, num_layers_sub=12),
}
"""LeVo 2 LM geometries (lm_tiny README, "The tiny config vs the real ones"); everything else is LMConfig's
v2 default. `tiny` is the test suite's tiny LM (dim 64 so quantisation groups of 64 apply)."""

ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4, "U8": 1}
NORM_COUNT = 200_000.0
"""`normfeat.counts` of the random decoder: past upstream's 100000 update threshold, like a trained file."""

RUNTIME_MARKER = "bench_runtime.json"


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # safetensors dtype code (ITEMSIZE keys)
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def find_fixtures(explicit: str | Path | None = None) -> Path:
    """The golden fixtures folder (tokenizer stand-in, real decoder shapes, tiny decoder files)."""
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get(FIXTURES_ENV):
        candidates.append(Path(os.environ[FIXTURES_ENV]))
    candidates += [REPO / "shared" / "fixtures", REPO.parent / "shared" / "fixtures"]
    for path in candidates:
        if (path / "qwen2_tokenizer" / "tokenizer.json").is_file():
            return path
    raise FileNotFoundError(
        f"fixtures folder not found (tried {', '.join(map(str, candidates))}); it provides the Qwen2 tokenizer "
        f"stand-in and the decoder shapes. Pass --fixtures DIR or set ${FIXTURES_ENV}.")


def write_safetensors(path: Path, specs: Mapping[str, TensorSpec], make: Callable[[str], np.ndarray],
                      metadata: dict[str, str] | None = None) -> Path:
    """Stream tensors into a .safetensors file: the header is known from `specs`, then `make(name)` supplies
    each tensor's bytes (any contiguous array whose bytes are the tensor) one at a time."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, spec in specs.items():
        header[name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, spec in specs.items():
                data = np.ascontiguousarray(make(name))
                if data.nbytes != spec.nbytes:
                    raise ValueError(f"{path}: {name} produced {data.nbytes} bytes, its header says {spec.nbytes}")
                f.write(memoryview(data.reshape(-1).view(np.uint8)))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def read_safetensors_specs(path: Path) -> dict[str, TensorSpec]:
    """Names, dtypes and shapes from a .safetensors header (no tensor data read)."""
    with Path(path).open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {k: TensorSpec(v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def name_seed(seed: int, name: str) -> int:
    """Each tensor gets its own stream, so values do not depend on the order tensors are written in."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF


# ----------------------------------------------------------------------------------------------- LM


def lm_config(size: str) -> LMConfig:
    from levo_batch.lm.config import LMConfig

    if size not in LM_SIZES:
        raise ValueError(f"unknown LM size {size!r}; choose one of {', '.join(LM_SIZES)}")
    return LMConfig(**LM_SIZES[size])


def lm_specs(cfg: LMConfig, quantize: int | None, group_size: int) -> dict[str, TensorSpec]:
    """The tensors `levo-batch convert` writes for `cfg`: bf16, and for quantised Linear/Embedding weights
    mlx's packed uint32 `.weight` plus bf16 `.scales`/`.biases` (one per group)."""
    import mlx.core as mx

    from levo_batch.lm.convert import quantizable
    from levo_batch.lm.loading import used_shapes

    specs = {}
    for key, shape in used_shapes(cfg).items():
        if quantize and quantizable(key, mx.zeros(shape), group_size):
            base = key[: -len("weight")]
            specs[key] = TensorSpec("U32", (shape[0], shape[1] * quantize // 32))
            specs[base + "scales"] = specs[base + "biases"] = TensorSpec("BF16", (shape[0], shape[1] // group_size))
        else:
            specs[key] = TensorSpec("BF16", shape)
    return specs


def lm_weight(cfg: LMConfig, key: str, shape: tuple[int, ...], seed: int):
    """One random bf16 LM tensor. The EOS row of the three output heads is zero: its logit is then 0 while
    the other 16384 are i.i.d. Gaussian (random rows), so EOS is never the argmax nor inside codebook 0's
    top-5000 and every song runs to max_duration - a deterministic worst case."""
    import mlx.core as mx

    if key.endswith("norm.weight"):
        return mx.ones(shape, dtype=mx.bfloat16)
    if key.endswith(".bias"):
        return mx.zeros(shape, dtype=mx.bfloat16)
    value = mx.random.normal(shape, key=mx.random.key(name_seed(seed, key))) * (shape[-1] ** -0.5)
    if key in ("transformer.lm_head.weight", "linears.0.weight", "linears.1.weight"):
        value[cfg.eos_id] = 0
    return value.astype(mx.bfloat16)


def write_lm_checkpoint(dst: Path, cfg: LMConfig, *, quantize: int | None = None, group_size: int = 64, seed: int = 0,
                        max_shard_bytes: int | None = None) -> Path:
    """Random MLX conversion of `cfg` in `dst` (shards named and indexed like `levo-batch convert`'s).

    `config.json` is written last, so a folder holding it is complete (callers may reuse it).
    """
    import mlx.core as mx

    from levo_batch.lm.convert import SHARD_BYTES, name_shards
    from levo_batch.lm.loading import used_shapes

    if quantize not in (None, 4, 8):
        raise ValueError(f"quantize must be 4 or 8 bits, got {quantize}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    specs = lm_specs(cfg, quantize, group_size)
    full_shapes = used_shapes(cfg)
    limit = max_shard_bytes or SHARD_BYTES
    shards: list[dict[str, TensorSpec]] = [{}]
    size = 0
    for name, spec in specs.items():
        if shards[-1] and size + spec.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = spec
        size += spec.nbytes
    cache: dict[str, mx.array] = {}

    def make(name: str) -> np.ndarray:
        """Quantised weights come in threes; the packed weight is made first, its scales/biases are kept."""
        if name in cache:
            value = cache.pop(name)
        elif specs[name].dtype == "U32":
            full = lm_weight(cfg, name, full_shapes[name], seed)
            value, scales, biases = mx.quantize(full, group_size=group_size, bits=quantize)
            base = name[: -len("weight")]
            cache[base + "scales"], cache[base + "biases"] = scales, biases
        else:
            value = lm_weight(cfg, name, specs[name].shape, seed)
        return np.array(value.reshape(-1).view(mx.uint8))

    paths, weight_map = [], {}
    for i, shard in enumerate(shards):
        paths.append(write_safetensors(dst / f".shard-{i}.safetensors", shard, make, {"format": "mlx"}))
        weight_map.update({k: paths[-1].name for k in shard})
    name_shards(dst, paths, weight_map)
    q = {"bits": quantize, "group_size": group_size} if quantize else None
    (dst / "config.json").write_text(json.dumps(replace(cfg, quantization=q).to_mlx(), indent=2) + "\n")
    return dst


# ------------------------------------------------------------------------------------------ runtime


def decoder_weight(name: str, shape: tuple[int, ...], seed: int):
    """One random float32 tensor of the septoken model or the VAE, finite through every layer: norm scales,
    weight-norm gains and BatchNorm variances 1, biases and log-scale snake parameters 0, latent statistics
    of a unit Gaussian, a non-negative mel filterbank (MusicFM takes its log), everything else Gaussian with
    1/sqrt(fan-in) scale."""
    import torch

    leaf = name.rsplit(".", 1)[-1]
    if name == "normfeat.counts" or name in ("normfeat.sum_x2", "normfeat.sum_target_x2"):
        return torch.full(shape, NORM_COUNT)
    if name == "normfeat.sum_x" or leaf in ("bias", "running_mean", "stale_counter", "alpha", "beta"):
        return torch.zeros(shape)
    if leaf in ("weight_g", "original0", "running_var") or (leaf == "weight" and len(shape) == 1):
        return torch.ones(shape)
    gen = torch.Generator().manual_seed(name_seed(seed, name))
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    value = torch.randn(shape, generator=gen) * fan_in**-0.5
    return value.abs() if name.endswith("mel_scale.fb") else value


def _tensor_bytes(name: str, spec: TensorSpec, seed: int) -> np.ndarray:
    if spec.dtype == "I64":
        return np.zeros(spec.shape, dtype=np.int64)
    if spec.dtype != "F32":
        raise ValueError(f"{name}: random decoder tensors are float32 or int64, not {spec.dtype}")
    return decoder_weight(name, spec.shape, seed).numpy()


def septoken_specs(fixtures: Path, tiny: bool) -> dict[str, TensorSpec]:
    """Every tensor of upstream's `model_2.safetensors` (fp32; BatchNorm counters int64), real or tiny size."""
    if tiny:
        return read_safetensors_specs(fixtures / "decoder_tiny" / "septoken_model.safetensors")
    shapes = _real_sizes(fixtures)["septoken_PromptCondAudioDiffusion"]["shapes"]
    return {k: TensorSpec("I64" if k.endswith("num_batches_tracked") else "F32", tuple(v)) for k, v in shapes.items()}


def _real_sizes(fixtures: Path) -> dict:
    return json.loads((fixtures / "decoder_tiny" / "real_size_state_dicts.json").read_text())


def tiny_decoder_geometry(fixtures: Path) -> dict:
    """`levo_decoder.json` for the tiny septoken model: its GPT-2 sizes, which the weights alone do not give."""
    gpt2 = json.loads((fixtures / "decoder_tiny" / "config.json").read_text())["septoken"]["GPT2Config"]
    return {k: gpt2[k] for k in ("n_positions", "n_layer", "n_head", "n_embd", "n_inner")}


def write_runtime(root: Path, fixtures: Path, *, tiny: bool, seed: int = 0,
                  decoder_overrides: dict | None = None) -> tuple[RuntimePaths, bool]:
    """Random runtime assets in `root`, or the ones already there if its marker says they were built alike.

    Returns the `RuntimePaths` and whether they were reused. Tiny: the decoder_tiny fixture geometry (plus
    `levo_decoder.json`, with `decoder_overrides` such as shorter windows); real: upstream's shapes, a
    4.4 GB septoken file and a 0.7 GB VAE checkpoint.
    """
    import torch

    from levo_batch.decoder.estimator import CONFIG_FILE
    from levo_batch.runtime import RuntimePaths

    paths = RuntimePaths(Path(root).resolve())
    marker = paths.root / RUNTIME_MARKER
    recipe = {"tiny": tiny, "seed": seed, "decoder_overrides": decoder_overrides or {}}
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return paths, True
    marker.unlink(missing_ok=True)
    shutil.copytree(fixtures / "qwen2_tokenizer", paths.tokenizer_dir, dirs_exist_ok=True)
    paths.septoken.parent.mkdir(parents=True, exist_ok=True)
    specs = septoken_specs(fixtures, tiny)
    write_safetensors(paths.septoken, specs, lambda n: _tensor_bytes(n, specs[n], seed), {"format": "pt"})
    geometry = {**(tiny_decoder_geometry(fixtures) if tiny else {}), **(decoder_overrides or {})}
    (paths.septoken.parent / CONFIG_FILE).unlink(missing_ok=True)
    if geometry:
        (paths.septoken.parent / CONFIG_FILE).write_text(json.dumps(geometry, indent=2) + "\n")
    paths.vae_config.parent.mkdir(parents=True, exist_ok=True)
    if tiny:
        shutil.copy(fixtures / "decoder_tiny" / "vae_config.json", paths.vae_config)
        vae_specs = read_safetensors_specs(fixtures / "decoder_tiny" / "vae.safetensors")
    else:
        real = _real_sizes(fixtures)
        paths.vae_config.write_text(json.dumps(real["vae_config"], indent=2) + "\n")
        vae_specs = {k: TensorSpec("F32", tuple(v)) for k, v in real["vae_AudioAutoencoder"]["shapes"].items()}
    state = {k: decoder_weight(k, spec.shape, seed) for k, spec in vae_specs.items()}
    torch.save({"state_dict": state}, paths.vae_weights)
    marker.write_text(json.dumps(recipe) + "\n")
    return paths, False


# -------------------------------------------------------------------------------------------- album


EN_WORDS = ("light", "river", "night", "heart", "road", "city", "rain", "fire", "dream", "summer", "shadow",
            "morning", "ocean", "window", "letter", "song", "sky", "home", "story", "promise")
EN_LINES = ("I remember the {0} on the {1}", "we were running through the {0}", "hold on to the {0} tonight",
            "every {0} is a {1} to me", "you and I under the {0}", "the {0} keeps calling my name",
            "we will find the {0} again", "nothing stops the {0} and the {1}")
ZH_CHARS = ("风雨花月光夜心梦城海天星路歌爱你我他们在的是一个"
            "不了人有这中大来上为和国地到以说时要就出会可也")
GENRES = ("pop", "rock", "folk", "electronic", "r&b", "jazz", "hip-hop", "country", "ballad", "dance")
MOODS = ("happy", "sad", "romantic", "energetic", "calm", "nostalgic", "uplifting", "dark")
INSTRUMENTS = ("piano", "acoustic guitar", "electric guitar", "drums", "bass", "synthesizer", "strings", "violin")


def _phrase(rng: random.Random, zh: bool) -> str:
    if zh:
        return "".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(6, 9)))
    return rng.choice(EN_LINES).format(rng.choice(EN_WORDS), rng.choice(EN_WORDS)).capitalize()


def song_lyrics(rng: random.Random, zh: bool) -> str:
    """intro, verse, chorus, instrumental, verse, chorus, bridge, chorus, outro: a typical 2-3 minute song."""
    chorus = ".".join(_phrase(rng, zh) for _ in range(4))
    sections = [f"[intro-{rng.choice(('short', 'medium'))}]"]
    for verse in range(2):
        sections += ["[verse] " + ".".join(_phrase(rng, zh) for _ in range(4)), f"[chorus] {chorus}"]
        if verse == 0:
            sections.append(f"[inst-{rng.choice(('short', 'medium'))}]")
    sections += ["[bridge] " + ".".join(_phrase(rng, zh) for _ in range(2)), f"[chorus] {chorus}",
                 f"[outro-{rng.choice(('short', 'medium'))}]"]
    return " ; ".join(sections)


def write_songs(path: Path, n: int, seed: int = 0) -> Path:
    """`n` jobs: 60% English, 40% Chinese; most with a description (gender, genre, mood, instruments, bpm)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        zh = rng.random() < 0.4
        item = {"idx": f"{'zh' if zh else 'en'}_{i:03d}", "gt_lyric": song_lyrics(rng, zh)}
        if rng.random() < 0.9:
            item["descriptions"] = (f"{rng.choice(('female', 'male'))}, {rng.choice(GENRES)}, {rng.choice(MOODS)}, "
                                    f"{' and '.join(rng.sample(INSTRUMENTS, 2))}, the bpm is {rng.randint(70, 150)}.")
        lines.append(orjson.dumps(item))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path
