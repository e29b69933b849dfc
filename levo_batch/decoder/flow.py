"""Codes -> 25 Hz VAE latents for one 1000-frame window: conditional flow matching with an Euler solver.

Mirrors upstream's `inference_codes` + `solve_euler`: the two token streams are dequantised into a 2x1024-wide
condition, the estimator is integrated from Gaussian noise over 10 uniform steps with classifier-free
guidance, and an optional in-context prefix (known latents) is re-imposed on its noisy path every step.
Unlike upstream, every batch item carries its own in-context length so windows of different songs can share
one batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from levo_batch.codec.vq import SingleVQ
from levo_batch.codec.weights import source_name, take
from levo_batch.contracts import derive_seed
from levo_batch.decoder.estimator import GEOMETRY_HINT, LATENT_DIM, DecoderConfig, Estimator

log = logging.getLogger(__name__)

SIGMA_MIN = 1e-4
FROZEN_NORM_COUNT = 100_000
VOCAL_VQ = "rvq_bestrq_emb."
BGM_VQ = "rvq_bestrq_bgm_emb."
MASK_CONTEXT, MASK_GENERATE = 1, 2

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seeded_noise(seed: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise determined by `(seed, key)` alone, drawn on the CPU so every device agrees."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, key)))


@dataclass
class LatentNorm:
    """Per-channel latent standardisation from upstream's running sums (`normfeat.*`)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], device: torch.device | str | None = None) -> "LatentNorm":
        """Statistics are frozen as stored. With fewer than FROZEN_NORM_COUNT samples upstream would keep
        updating them on every window, so its output would depend on how many windows it had seen; we keep
        decoding reproducible instead and say so."""
        t = {k: v.double() for k, v in take(sd, "normfeat.", ["counts", "sum_x", "sum_x2"]).items()}
        count = float(t["counts"].reshape(-1)[0])
        if count < 10:
            mean, std = torch.zeros_like(t["sum_x"]), torch.ones_like(t["sum_x"])
        else:
            if count < FROZEN_NORM_COUNT:
                log.warning("%s: normfeat.counts is %g (< %d): upstream would still update these latent "
                            "statistics while decoding; levo_batch keeps them frozen (reproducible output).",
                            source_name(sd), count, FROZEN_NORM_COUNT)
            mean = (t["sum_x"].float() / t["counts"].float())
            std = (t["sum_x2"].float() / t["counts"].float() - mean**2).clamp(min=0).sqrt()
        return cls(mean.float().to(device), std.float().to(device))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * (1 / self.std.clamp(min=1e-12))

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def solve_euler(velocity: Velocity, noise: torch.Tensor, context: torch.Tensor, prefix: torch.Tensor,
                steps: int) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t=0 (noise) to 1; `prefix` frames follow the straight noise->context path.

    noise/context `[B, T, 64]`, prefix `[B, T, 1]` bool. Returns x at t=1 before the final context overwrite.
    """
    t_span = torch.linspace(0, 1, steps + 1, device=noise.device)
    dt = t_span[1:] - t_span[:-1]
    x = noise.clone()
    for i in range(steps):
        t = t_span[i]
        x = torch.where(prefix, (1 - (1 - SIGMA_MIN) * t) * noise + t * context, x)
        x = x + dt[i] * velocity(x, t)
    return x


class CompiledOrEager(nn.Module):
    """`torch.compile` of a module that falls back to eager mode for good if compiling fails.

    Compilation needs a working toolchain (Triton on CUDA) that a user's machine may lack; a render must not
    fail for it. On the H100 it cuts a warm estimator batch by about 40 % (fused norms and modulation).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)
        self.failed = False

    def forward(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as exc:  # compiler/toolchain problems surface at the first call
                self.failed = True
                log.warning("torch.compile of the decoder failed (%s); continuing without it", exc)
        return self.module(*args)


class FlowDecoder(nn.Module):
    """Dequantisers + estimator + latent normaliser: everything between codes and VAE latents."""

    def __init__(self, cfg: DecoderConfig, vocal_vq: SingleVQ, bgm_vq: SingleVQ, mask_emb: torch.Tensor,
                 norm: LatentNorm, estimator: Estimator):
        super().__init__()
        self.cfg = cfg
        self.vocal_vq = vocal_vq
        self.bgm_vq = bgm_vq
        self.register_buffer("mask_emb", mask_emb)
        self.norm = norm
        self.estimator = estimator

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], cfg: DecoderConfig, *,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> "FlowDecoder":
        vocal = SingleVQ.from_state_dict(sd, VOCAL_VQ, device=device, dtype=dtype)
        bgm = SingleVQ.from_state_dict(sd, BGM_VQ, device=device, dtype=dtype)
        mask_emb = take(sd, "", ["mask_emb.weight"])["mask_emb.weight"].float().to(device)
        width = mask_emb.shape[1] + 2 * LATENT_DIM + vocal.dim + bgm.dim
        if width != cfg.n_embd:
            raise ValueError(f"{source_name(sd)}: mask/latent/token widths add up to {width}, "
                             f"but the estimator is {cfg.n_embd} wide; {GEOMETRY_HINT}")
        estimator = Estimator.from_state_dict(sd, cfg, device=device, dtype=dtype)
        return cls(cfg, vocal, bgm, mask_emb, LatentNorm.from_state_dict(sd, device), estimator).eval()

    def velocity_field(self, codes_vocal: torch.Tensor, codes_bgm: torch.Tensor, context: torch.Tensor,
                       prefix: torch.Tensor) -> Velocity:
        """Guided velocity v(x, t). Input channels per frame: [mask_emb | context | vocal | bgm | x_t]; the
        unconditional half (first, as upstream) zeroes both token embeddings and keeps the rest."""
        mask = torch.where(prefix[..., 0], MASK_CONTEXT, MASK_GENERATE)
        tokens = torch.cat([self.vocal_vq.embed(codes_vocal), self.bgm_vq.embed(codes_bgm)], -1).float()
        fixed = torch.cat([self.mask_emb[mask], context], -1)
        guidance = self.cfg.guidance_scale
        if guidance > 1.0:
            static = torch.cat([torch.cat([fixed, torch.zeros_like(tokens)], -1), torch.cat([fixed, tokens], -1)])
        else:
            static = torch.cat([fixed, tokens], -1)
        copies = static.shape[0] // fixed.shape[0]

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = self.estimator(torch.cat([static, x.repeat(copies, 1, 1)], -1), t.expand(static.shape[0]))
            if copies == 1:
                return v
            v_uncond, v_cond = v.chunk(2)
            return v_uncond + guidance * (v_cond - v_uncond)

        return velocity

    @torch.no_grad()
    def sample(self, codes_vocal: torch.Tensor, codes_bgm: torch.Tensor, context: torch.Tensor,
               incontext: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One window per batch item -> de-normalised latents `[B, 64, T]` (float32).

        codes `[B, T]` int64; context `[B, T, 64]` raw (de-normalised) latents of which only the first
        `incontext[b]` frames are read; noise `[B, T, 64]` is the Euler start x0.
        """
        frames = codes_vocal.shape[1]
        prefix = (torch.arange(frames, device=noise.device)[None] < incontext[:, None])[..., None]
        ctx = self.norm.project(context.float()) * prefix
        velocity = self.velocity_field(codes_vocal, codes_bgm, ctx, prefix)
        x = solve_euler(velocity, noise.float(), ctx, prefix, self.cfg.num_steps)
        x = torch.where(prefix, ctx, x)
        return self.norm.restore(x).transpose(1, 2)
