"""The flow-matching velocity estimator: a non-causal GPT-2 variant with adaLN-single time conditioning.

Upstream builds it from a modified HF GPT2Model; we keep its weight names (`cfm_wrapper.estimator.*`) but run
it as plain functions over `torch.nn.functional.scaled_dot_product_attention`. Quirks that must stay: learned
absolute positions (`wpe`) are added even though attention also applies interleaved RoPE; Conv1D weights are
stored `[in, out]`; the final adaLN reads the timestep embedding itself, the blocks read its projection.

Precision mirrors upstream's CUDA autocast: matmuls run in the weights' dtype (fp16/bf16 on GPU) while the
residual stream, LayerNorm, modulation and RoPE stay in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from levo_batch.codec.weights import geometry_beside, source_name, take

CONFIG_FILE = "levo_decoder.json"
GEOMETRY_HINT = f"a non-official model needs a {CONFIG_FILE} next to its weights giving its geometry"
ESTIMATOR_PREFIX = "cfm_wrapper.estimator."
LATENT_DIM = 64
TIME_FREQ_DIM = 512


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder geometry; defaults are the official LeVo 2 values.

    Head count cannot be read off the weight shapes, so non-official (tiny test) checkpoints ship a
    `levo_decoder.json` next to the septoken safetensors overriding any of these fields. `duration` (window
    seconds) and `vae_chunk_size` exist for such models too: upstream hard-codes 40 s windows and 128-frame VAE
    chunks.
    """

    n_positions: int = 1000
    n_layer: int = 16
    n_head: int = 20
    n_embd: int = 2200
    n_inner: int = 4400
    layer_norm_epsilon: float = 1e-5
    rope_theta: float = 10000.0
    duration: int = 40
    vae_chunk_size: int = 128
    guidance_scale: float = 1.5
    num_steps: int = 10

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def for_weights(cls, septoken: Path) -> "DecoderConfig":
        """Defaults, overridden by `levo_decoder.json` beside the weights when that file exists."""
        overrides = geometry_beside(septoken, CONFIG_FILE)
        if overrides is None:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{Path(septoken).parent / CONFIG_FILE}: unknown keys {unknown}; allowed: {sorted(known)}")
        return replace(cls(), **overrides)


def timestep_features(t: torch.Tensor) -> torch.Tensor:
    """`[B]` flow times in [0, 1] -> `[B, 512]` sinusoids (cos first; times scaled by 1000 as in training)."""
    half = TIME_FREQ_DIM // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half).float()
    args = t.float()[:, None] * freqs[None] * 1000
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_tables(length: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[T, 1, head_dim/2]` for interleaved-pair rotary embedding, in float32."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length, device=device).float(), inv)
    return torch.cos(angles)[:, None], torch.sin(angles)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs `(x[2j], x[2j+1])` of `[B, T, H, hd]` by position-dependent angles (computed in fp32)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).to(x.dtype)


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm of the float32 residual stream (upstream autocast keeps norms in fp32)."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class Block(nn.Module):
    """One transformer block: adaLN-modulated attention and MLP, each with a learned gate."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        e = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln_1 = nn.LayerNorm(e, eps=cfg.layer_norm_epsilon)
        self.ln_2 = nn.LayerNorm(e, eps=cfg.layer_norm_epsilon)
        self.qkv = nn.Linear(e, 3 * e)
        self.attn_out = nn.Linear(e, e)
        self.fc = nn.Linear(e, cfg.n_inner)
        self.fc_out = nn.Linear(cfg.n_inner, e)
        self.scale_shift_table = nn.Parameter(torch.empty(6, e))

    def attention(self, z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Full bidirectional attention. head_dim 110 is zero-padded to a multiple of 8 so fused kernels apply;
        padding q/k/v with zeros and keeping the 1/sqrt(110) scale leaves the result unchanged."""
        b, t, e = z.shape
        hd = e // self.n_head
        q, k, v = self.qkv(z).view(b, t, 3, self.n_head, hd).unbind(2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        pad = -hd % 8
        q, k, v = (F.pad(x, (0, pad)).transpose(1, 2) for x in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(hd))[..., :hd]
        return self.attn_out(a.transpose(1, 2).reshape(b, t, e))

    def forward(self, h: torch.Tensor, mod: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        dtype = self.qkv.weight.dtype
        sh1, sc1, g1, sh2, sc2, g2 = (self.scale_shift_table[None] + mod).chunk(6, dim=1)
        z = layer_norm(h, self.ln_1) * (1 + sc1) + sh1
        h = h + g1 * self.attention(z.to(dtype), cos, sin).float()
        z = layer_norm(h, self.ln_2) * (1 + sc2) + sh2
        y = self.fc_out(F.gelu(self.fc(z.to(dtype)), approximate="tanh"))
        return h + g2 * y.float()


class Estimator(nn.Module):
    """Velocity field v(x_t, t | conditioning) over `[B, T, n_embd]` inputs; returns the `[B, T, 64]` velocity.

    Upstream projects to all n_embd channels and keeps the last 64; we only hold those 64 rows of `proj_out`.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        e = cfg.n_embd
        self.cfg = cfg
        self.wpe = nn.Parameter(torch.empty(cfg.n_positions, e))
        self.time_in = nn.Linear(TIME_FREQ_DIM, e)
        self.time_hidden = nn.Linear(e, e)
        self.time_mod = nn.Linear(e, 6 * e)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(e, eps=cfg.layer_norm_epsilon)
        self.scale_shift_table = nn.Parameter(torch.empty(2, e))
        self.proj_out = nn.Linear(e, LATENT_DIM)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], cfg: DecoderConfig, *, prefix: str = ESTIMATOR_PREFIX,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> "Estimator":
        """Map upstream's GPT2 names onto this module (Conv1D weights transposed), checking every shape.

        Only the linear layers take `dtype`; norms, modulation tables and positions stay float32, as upstream's
        fp32 weights do under autocast."""
        n_layer = sum(1 for i in range(cfg.n_layer + 1) if f"{prefix}h.{i}.ln_1.weight" in sd)
        if n_layer != cfg.n_layer and f"{prefix}h.0.ln_1.weight" in sd:
            raise ValueError(f"{source_name(sd)} has {n_layer}{'+' * (n_layer > cfg.n_layer)} estimator blocks, "
                             f"the config {cfg.n_layer}; {GEOMETRY_HINT}")
        with torch.device("meta"):
            model = cls(cfg)
        src = _upstream_tensors(sd, prefix, cfg)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        bad = [f"{k}: file {tuple(src[k].shape)} vs config {tuple(s)}" for k, s in expected.items()
               if src[k].shape != s]
        if bad:
            raise ValueError(f"estimator weights in {source_name(sd)} do not fit the config "
                             f"({'; '.join(bad[:4])}); {GEOMETRY_HINT}")
        linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
        state = {}
        for key in list(src):  # pop as we go: host memory holds the file's tensors only until they are moved
            target = dtype if key.rsplit(".", 1)[0] in linears else torch.float32
            state[key] = src.pop(key).to(device=device, dtype=target).contiguous()
        model.load_state_dict(state, assign=True)
        return model.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x `[B, T, n_embd]` (float32), t `[B]` -> velocity `[B, T, 64]` (float32)."""
        dtype = self.proj_out.weight.dtype
        length = x.shape[1]
        h = x.float() + self.wpe[:length]
        te = self.time_hidden(F.silu(self.time_in(timestep_features(t).to(dtype))))
        mod = self.time_mod(F.silu(te)).float().view(len(t), 6, -1)
        cos, sin = rope_tables(length, self.cfg.head_dim, self.cfg.rope_theta, x.device)
        for block in self.blocks:
            h = block(h, mod, cos, sin)
        shift, scale = (self.scale_shift_table[None] + te.float()[:, None]).chunk(2, dim=1)
        z = layer_norm(h, self.ln_f) * (1 + scale) + shift
        return self.proj_out(z.to(dtype)).float()


def _upstream_tensors(sd: Mapping[str, torch.Tensor], prefix: str, cfg: DecoderConfig) -> dict[str, torch.Tensor]:
    """Our parameter names -> tensors read from upstream's names (only the ones inference uses)."""
    top = take(sd, prefix, [
        "wpe.weight", "ln_f.weight", "ln_f.bias", "proj_out.weight", "proj_out.bias", "scale_shift_table",
        "adaln_single.emb.timestep_embedder.linear_1.weight", "adaln_single.emb.timestep_embedder.linear_1.bias",
        "adaln_single.emb.timestep_embedder.linear_2.weight", "adaln_single.emb.timestep_embedder.linear_2.bias",
        "adaln_single.linear.weight", "adaln_single.linear.bias",
    ])
    out = {
        "wpe": top["wpe.weight"],
        "time_in.weight": top["adaln_single.emb.timestep_embedder.linear_1.weight"],
        "time_in.bias": top["adaln_single.emb.timestep_embedder.linear_1.bias"],
        "time_hidden.weight": top["adaln_single.emb.timestep_embedder.linear_2.weight"],
        "time_hidden.bias": top["adaln_single.emb.timestep_embedder.linear_2.bias"],
        "time_mod.weight": top["adaln_single.linear.weight"],
        "time_mod.bias": top["adaln_single.linear.bias"],
        "ln_f.weight": top["ln_f.weight"],
        "ln_f.bias": top["ln_f.bias"],
        "scale_shift_table": top["scale_shift_table"],
        "proj_out.weight": top["proj_out.weight"][-LATENT_DIM:],
        "proj_out.bias": top["proj_out.bias"][-LATENT_DIM:],
    }
    conv1d = {"qkv": "attn.c_attn", "attn_out": "attn.c_proj", "fc": "mlp.c_fc", "fc_out": "mlp.c_proj"}
    for i in range(cfg.n_layer):
        names = [f"{n}.{p}" for n in ("ln_1", "ln_2", *conv1d.values()) for p in ("weight", "bias")]
        blk = take(sd, f"{prefix}h.{i}.", names + ["scale_shift_table"])
        for ours, theirs in conv1d.items():
            out[f"blocks.{i}.{ours}.weight"] = blk[f"{theirs}.weight"].t()
            out[f"blocks.{i}.{ours}.bias"] = blk[f"{theirs}.bias"]
        for ln in ("ln_1", "ln_2"):
            out[f"blocks.{i}.{ln}.weight"] = blk[f"{ln}.weight"]
            out[f"blocks.{i}.{ln}.bias"] = blk[f"{ln}.bias"]
        out[f"blocks.{i}.scale_shift_table"] = blk["scale_shift_table"]
    return out
