"""The Stable-Audio "Oobleck" VAE that turns 25 Hz latents into 48 kHz stereo (and prompt audio into latents).

Own implementation of the stable-audio-tools `AudioAutoencoder` that upstream SongGeneration uses, with its
exact chunked decode (`decode_audio(chunked=True)`) and sampled VAE bottleneck. Weight norm is folded at
load, chunks of several windows/songs can be decoded together, and nothing here is CUDA-only.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from levo_batch.decoder.vae_blocks import OobleckDecoder, OobleckEncoder, SnakeBeta, snake_beta
from levo_batch.errors import first_few
from levo_batch.torch_utils import fold_weight_norm, torch_device

PARTS = ("decoder", "encoder")


@dataclass(frozen=True)
class VAEConfig:
    """Geometry of an Oobleck autoencoder with a VAE bottleneck (encoder and decoder mirror each other)."""

    channels: int = 128
    c_mults: tuple[int, ...] = (1, 2, 4, 8, 16)
    strides: tuple[int, ...] = (2, 4, 4, 6, 10)
    latent_dim: int = 64
    io_channels: int = 2
    use_snake: bool = True
    final_tanh: bool = False
    sample_rate: int = 48000

    @property
    def downsampling_ratio(self) -> int:
        return math.prod(self.strides)

    @classmethod
    def from_json(cls, path: Path) -> "VAEConfig":
        """Read a stable-audio-tools model config: an autoencoder config such as upstream's
        `stable_audio_1920_vae.json`, or a model whose `pretransform` is such an autoencoder."""
        path = Path(path)
        data = json.loads(path.read_text())
        model = data.get("model", data)
        if "pretransform" in model:
            model = model["pretransform"]["config"]
        try:
            config = cls._parse(data, model)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a stable-audio-tools autoencoder config (missing/invalid {e})") from e
        except ValueError as e:
            raise ValueError(f"{path}: unsupported VAE config: {e}") from e
        return config

    @classmethod
    def _parse(cls, data: dict, model: dict) -> "VAEConfig":
        enc, dec = model["encoder"], model["decoder"]
        for name, part in (("encoder", enc), ("decoder", dec)):
            if part["type"] != "oobleck":
                raise ValueError(f"{name} type {part['type']!r} (only 'oobleck' is implemented)")
        if model.get("bottleneck", {}).get("type") != "vae":
            raise ValueError(f"bottleneck {model.get('bottleneck')!r} (only type 'vae' is implemented)")
        ec, dc = enc["config"], dec["config"]
        config = cls(
            channels=dc["channels"], c_mults=tuple(dc["c_mults"]), strides=tuple(dc["strides"]),
            latent_dim=model["latent_dim"], io_channels=model["io_channels"],
            use_snake=dc.get("use_snake", False), final_tanh=dc.get("final_tanh", True),
            sample_rate=data.get("sample_rate", cls.sample_rate),
        )
        mirrored = (ec["channels"], tuple(ec["c_mults"]), tuple(ec["strides"]), ec.get("use_snake", False))
        if mirrored != (config.channels, config.c_mults, config.strides, config.use_snake):
            raise ValueError("encoder and decoder differ in channels/c_mults/strides/use_snake")
        if any(cfg.get(k) for cfg in (ec, dc) for k in ("antialias_activation", "use_nearest_upsample")):
            raise ValueError("antialias_activation / use_nearest_upsample are not implemented")
        if (ec["latent_dim"], dc["latent_dim"]) != (2 * config.latent_dim, config.latent_dim):
            raise ValueError(f"encoder/decoder latent_dim {ec['latent_dim']}/{dc['latent_dim']} do not fit a "
                             f"VAE bottleneck with latent_dim {config.latent_dim}")
        if (ec.get("in_channels", 2), dc.get("out_channels", 2)) != (config.io_channels,) * 2:
            raise ValueError(f"encoder in_channels / decoder out_channels differ from io_channels {config.io_channels}")
        if model["downsampling_ratio"] != config.downsampling_ratio:
            raise ValueError(f"downsampling_ratio {model['downsampling_ratio']} != prod(strides) "
                             f"{config.downsampling_ratio}")
        return config


def chunk_starts(frames: int, chunk: int, overlap: int) -> list[int]:
    """First frames of the chunks of upstream's chunked VAE decode of `frames > chunk` latents: every
    `chunk - overlap` frames, plus one right-aligned final chunk."""
    starts = list(range(0, frames - chunk + 1, chunk - overlap))
    if starts[-1] + chunk != frames:
        starts.append(frames - chunk)
    return starts


class OobleckVAE(nn.Module):
    """Decoder and/or encoder of the autoencoder; inputs are moved to the model's device and dtype."""

    def __init__(self, config: VAEConfig, parts: Sequence[str] = PARTS):
        super().__init__()
        c = config
        self.config = config
        self.decoder = (OobleckDecoder(c.io_channels, c.channels, c.c_mults, c.strides, c.latent_dim,
                                       c.use_snake, c.final_tanh) if "decoder" in parts else None)
        self.encoder = (OobleckEncoder(c.io_channels, c.channels, c.c_mults, c.strides, 2 * c.latent_dim,
                                       c.use_snake) if "encoder" in parts else None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _part(self, name: str) -> nn.Module:
        part = getattr(self, name)
        if part is None:
            raise RuntimeError(f"this VAE was loaded without its {name}: pass parts including {name!r} to load_vae")
        return part

    def compile_snake(self) -> None:
        """Fuse every SnakeBeta into one kernel with torch.compile (optional; needs a working compiler)."""
        fused = torch.compile(snake_beta, dynamic=True)
        for module in self.modules():
            if isinstance(module, SnakeBeta):
                module.fn = fused

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`[B, latent_dim, T]` -> `[B, io, T * 1920]` in one pass (memory grows with T; see decode_chunked)."""
        return self._part("decoder")(latents.to(self.device, self.dtype))

    @torch.no_grad()
    def decode_chunked(self, latents: torch.Tensor, chunk_size: int = 128, overlap: int = 32,
                       max_batch: int = 8) -> torch.Tensor:
        """Upstream's chunked `decode_audio`: `[B, latent_dim, T]` -> `[B, io, T * 1920]`.

        Chunks of `chunk_size` frames on the `chunk_starts` grid are each decoded on their own and pasted with
        `overlap // 2` frames cut at every inner edge (hard cuts, later chunks win). The chunks of all B rows (windows, songs) are decoded
        `max_batch` at a time: the same computation as one by one, up to float rounding (conv libraries
        pick kernels per batch size; about 1e-6 on CPU). Upstream fails for T < chunk_size; here such latents (and
        T == chunk_size) are decoded as one chunk.
        """
        latents = latents.to(self.device, self.dtype)
        batch, _, frames = latents.shape
        if frames <= chunk_size:
            return self.decode(latents)
        starts = chunk_starts(frames, chunk_size, overlap)
        chunks = torch.cat([latents[:, :, s : s + chunk_size] for s in starts])  # chunk-major: [n*B, C, chunk]
        decoded = torch.cat([self._part("decoder")(part) for part in chunks.split(max_batch)])
        ratio = self.config.downsampling_ratio
        cut = (overlap // 2) * ratio
        out = latents.new_zeros(batch, self.config.io_channels, frames * ratio)
        for i, start in enumerate(starts):
            head = cut if i > 0 else 0
            tail = cut if i < len(starts) - 1 else 0
            audio = decoded[i * batch : (i + 1) * batch]
            out[:, :, start * ratio + head : (start + chunk_size) * ratio - tail] = \
                audio[:, :, head : audio.shape[-1] - tail]
        return out

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """`[B, io, N]` -> sampled latents `[B, latent_dim, N // 1920]`: `mean + (softplus(scale) + 1e-4) * noise`.

        `noise` (`[B, latent_dim, N // 1920]`) is injected as given, for parity with recorded runs;
        otherwise it is drawn from `generator` on the generator's own device, so a CPU generator gives
        the same latents on every device.
        """
        features = self._part("encoder")(audio.to(self.device, self.dtype))
        mean, scale = features.chunk(2, dim=1)
        std = F.softplus(scale) + 1e-4
        if noise is None:
            gen_device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=torch.float32)
        return noise.to(mean) * std + mean

    def encode_audio(self, audio: torch.Tensor, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Upstream's (unchunked) prompt encode: `[io, N]` or `[B, io, N]` -> `[B, latent_dim, N // 1920]`.

        Upstream passes the 2-D prompt mix straight in; adding the batch dim gives the same result.
        """
        if audio.dim() == 2:
            audio = audio[None]
        if audio.dim() != 3 or audio.shape[1] != self.config.io_channels:
            raise ValueError(f"VAE encode expects audio [{self.config.io_channels}, N] or "
                             f"[B, {self.config.io_channels}, N], got {list(audio.shape)}")
        return self.encode(audio, noise=noise, generator=generator)


def _read_raw(weights: Path, parts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The tensors of the requested parts from an official `.ckpt` (`{'state_dict': ...}`) or a safetensors file."""
    prefixes = tuple(f"{p}." for p in parts)
    if not weights.is_file():
        raise FileNotFoundError(f"VAE weights not found: {weights}")
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    try:
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"could not read {weights} with torch.load(weights_only=True): {e}\n"
            "If you trust the file, convert it once to safetensors and pass that instead:\n"
            "  python -c \"import torch, safetensors.torch as st; "
            f"sd = torch.load('{weights}', map_location='cpu', weights_only=False)['state_dict']; "
            "st.save_file({k: v.contiguous() for k, v in sd.items() if k.startswith(('encoder.', 'decoder.'))}, "
            "'vae.safetensors')\"") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{weights}: expected a dict with a 'state_dict' of tensors, got {type(obj).__name__}")
    return {k: v for k, v in state.items() if k.startswith(prefixes) and isinstance(v, torch.Tensor)}


_WN_PARTNER = {"weight_g": "weight_v", "weight_v": "weight_g",
               "parametrizations.weight.original0": "parametrizations.weight.original1",
               "parametrizations.weight.original1": "parametrizations.weight.original0"}
_WN_GAIN = ("weight_g", "parametrizations.weight.original0")


def _fold(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold weight-norm pairs (legacy `weight_g`/`weight_v`, or `parametrizations` `original0/1`) into `weight`.

    An incomplete pair yields no `weight`, so it is reported as missing by the caller.
    """
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        suffix = next((s for s in _WN_PARTNER if key.endswith("." + s)), None)
        if suffix is None:
            state[key] = value
            continue
        base = key[: -len(suffix)]
        partner = base + _WN_PARTNER[suffix]
        if suffix in _WN_GAIN and partner in raw:
            state[base + "weight"] = fold_weight_norm(value.float(), raw[partner].float())
    return state


def load_vae(config_json: Path, weights: Path, device: torch.device | None = None,
             dtype: torch.dtype | None = None, *, parts: Sequence[str] = PARTS) -> OobleckVAE:
    """Build the VAE from its stable-audio-tools json and load an official `.ckpt` or a `.safetensors`.

    Only the requested `parts` are read and built (the decode phase never needs the encoder). Loading
    is strict on those parts' keys (other keys in the file are ignored, as upstream's `strict=False`
    load ignores them); weight norm is folded once here. Runs in float32 unless `dtype` is given,
    on `torch_device()` unless `device` is given.
    """
    parts = tuple(parts)
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
    config_json, weights = Path(config_json), Path(weights)
    config = VAEConfig.from_json(config_json)
    raw = _read_raw(weights, parts)
    state = _fold(raw)
    with torch.device("meta"):
        model = OobleckVAE(config, parts)
    expected = model.state_dict()
    missing = sorted(
        name for key in expected if key not in state
        for name in ((key + "_g", key + "_v") if key.endswith(".weight") else (key,)) if name not in raw)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [f"{k} {tuple(state[k].shape)} (config expects {tuple(v.shape)})"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"missing keys: {first_few(missing, 12)}" if missing else "",
                f"unexpected keys: {first_few(unexpected, 12)}" if unexpected else "",
                f"shape mismatch: {first_few(mismatched, 12)}" if mismatched else ""]
    if any(problems):
        raise ValueError(
            f"{weights} does not fit the VAE {'/'.join(parts)} described by {config_json}: "
            + "; ".join(p for p in problems if p)
            + ". Pass the VAE checkpoint that goes with this config (upstream: ckpt/vae/autoencoder_music_1320k.ckpt "
            "with ckpt/vae/stable_audio_1920_vae.json).")
    model.load_state_dict(state, assign=True)
    model.to(device=device or torch_device(), dtype=dtype or torch.float32)
    return model.eval().requires_grad_(False)
