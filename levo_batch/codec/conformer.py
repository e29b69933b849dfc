"""The wav2vec2-conformer layers inside MusicFM (transformers' `Wav2Vec2ConformerEncoder`, inference only).

Submodule names follow the checkpoint (`conformer.layers.{i}.ffn1.intermediate_dense`, ...) so the official
weights load by name. Two details differ from a textbook conformer and both matter for parity: the rotary
rotation is applied to the LayerNormed input *before* the q/k projections (v sees it unrotated), and every layer
ends with its own LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.silu(self.intermediate_dense(x)))


def rotary_table(inv_freq: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`cos`, `sin` of shape `[T, 1, head_dim]`, frequencies duplicated as `cat(f, f)` (rotate-half layout).

    Built in float32 from the checkpoint's own `inv_freq` (what upstream computes with after loading it).
    """
    freqs = torch.outer(torch.arange(length, dtype=torch.float32, device=inv_freq.device), inv_freq.float())
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos(), emb.sin()


class RotarySelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        heads = x.view(b, t, self.num_heads, -1)
        first, second = heads.chunk(2, dim=-1)
        rotated = (heads * cos + torch.cat((-second, first), dim=-1) * sin).reshape(b, t, d)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.linear_q(rotated)), split(self.linear_k(rotated)), split(self.linear_v(x))
        )
        return self.linear_out(out.transpose(1, 2).reshape(b, t, d))


class ConvModule(nn.Module):
    def __init__(self, dim: int, kernel_size: int, eps: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim, bias=False)
        self.batch_norm = nn.BatchNorm1d(dim, eps=eps)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)
        y = F.silu(self.batch_norm(self.depthwise_conv(y)))
        return self.pointwise_conv2(y).transpose(1, 2)


class ConformerLayer(nn.Module):
    """Half-step FFN, rotary self-attention, convolution, half-step FFN, LayerNorm (each with a residual)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, kernel_size: int, eps: float):
        super().__init__()
        self.ffn1_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn1 = FeedForward(dim, ffn_dim)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.self_attn = RotarySelfAttention(dim, num_heads)
        self.conv_module = ConvModule(dim, kernel_size, eps)
        self.ffn2_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn2 = FeedForward(dim, ffn_dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn(self.self_attn_layer_norm(x), cos, sin)
        x = x + self.conv_module(x)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)
