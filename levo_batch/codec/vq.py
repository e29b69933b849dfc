"""The single-codebook vector quantiser behind LM rows 1 (vocal) and 2 (bgm).

Upstream keeps it as a one-level residual VQ (`quantizers.0.*`) with weight-normed 1x1 convolutions around a
low-dimensional codebook. The decoder only dequantises (`embed`); the prompt encoders quantise
(`to_codes`). Both directions live here so the two sides can never disagree on the codebook layout.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from levo_batch.codec.weights import take
from levo_batch.torch_utils import fold_weight_norm

VQ_KEYS = (
    "codebook.weight",
    "in_proj.weight_g",
    "in_proj.weight_v",
    "in_proj.bias",
    "out_proj.weight_g",
    "out_proj.weight_v",
    "out_proj.bias",
)


class SingleVQ(torch.nn.Module):
    """Codebook `[K, d]` with projections `D -> d` (in) and `d -> D` (out), D the feature width."""

    def __init__(self, codebook: torch.Tensor, in_w: torch.Tensor, in_b: torch.Tensor,
                 out_w: torch.Tensor, out_b: torch.Tensor):
        super().__init__()
        self.register_buffer("codebook", codebook)
        self.register_buffer("in_w", in_w)
        self.register_buffer("in_b", in_b)
        self.register_buffer("out_w", out_w)
        self.register_buffer("out_b", out_b)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], prefix: str, *,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> "SingleVQ":
        """Build from upstream keys `{prefix}quantizers.0.*`, e.g. prefix `"rvq_bestrq_emb."`.

        Weight norm is folded in float32 before casting, so half-precision checkpoints lose nothing extra.
        """
        t = take(sd, prefix + "quantizers.0.", VQ_KEYS)
        in_w = fold_weight_norm(t["in_proj.weight_g"].float(), t["in_proj.weight_v"].float())[..., 0]
        out_w = fold_weight_norm(t["out_proj.weight_g"].float(), t["out_proj.weight_v"].float())[..., 0]
        parts = (t["codebook.weight"].float(), in_w, t["in_proj.bias"].float(), out_w, t["out_proj.bias"].float())
        return cls(*(p.to(device=device, dtype=dtype) for p in parts))

    @property
    def dim(self) -> int:
        """Feature width D (1024 in the real model)."""
        return self.out_w.shape[0]

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Dequantise `[B, T]` codes to time-major features `[B, T, D]` (the layout the estimator consumes)."""
        return F.linear(self.codebook[codes], self.out_w, self.out_b)

    def to_codes(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest code by cosine similarity for `[B, D, T]` features -> `[B, T]` int64.

        Uses upstream's squared-distance form on unit vectors (not a bare dot product) so near-ties resolve
        the same way; one batch item at a time keeps the `[T, K]` distance matrix small.
        """
        codebook = F.normalize(self.codebook.float())
        c_sq = codebook.pow(2).sum(1)
        codes = []
        for item in features:
            z_e = F.linear(item.transpose(0, 1).float(), self.in_w.float(), self.in_b.float())
            e = F.normalize(z_e)
            dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ codebook.t() + c_sq
            codes.append((-dist).argmax(1))
        return torch.stack(codes)
