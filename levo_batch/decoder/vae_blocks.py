"""Building blocks of the Stable-Audio "Oobleck" autoencoder (SnakeBeta, residual units, up/down blocks).

Convolutions hold plain weights: the checkpoint's legacy weight-norm pairs are folded once at load
(`levo_batch.decoder.vae.load_vae`), so inference never recomputes `g * v / ||v||`. Module and
parameter names mirror stable-audio-tools (`layers.N...`) so checkpoint keys map one to one.
"""

from __future__ import annotations

import math
import platform
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MPS_CONV_LIMIT = 1 << 16
"""PyTorch refuses MPS convolutions with any dimension above 2**16 on macOS before 15.1."""


def _macos_conv_limit() -> int | None:
    release = platform.mac_ver()[0]
    if not release:
        return None
    version = tuple(int(p) for p in release.split(".")[:2])
    return MPS_CONV_LIMIT if version < (15, 1) else None


_MPS_LIMIT = _macos_conv_limit()


def _device_limit(x: torch.Tensor) -> int | None:
    return _MPS_LIMIT if x.device.type == "mps" else None


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """SnakeBeta with log-scale parameters: `x + sin(e^alpha x)^2 / (e^beta + 1e-9)`.

    Written as one `addcmul` over a squared sine so eager mode runs four elementwise kernels instead of
    six; `torch.compile` fuses it into one (see `OobleckVAE.compile_snake`).
    """
    scale = alpha.exp()[:, None]
    inv_beta = 1.0 / (beta.exp()[:, None] + 1e-9)
    return torch.addcmul(x, inv_beta, torch.sin(x * scale).square_())


class SnakeBeta(nn.Module):
    """Periodic activation with per-channel frequency and magnitude (log-scale, zero-initialised)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = snake_beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.alpha, self.beta)


def activation(use_snake: bool, channels: int) -> nn.Module:
    return SnakeBeta(channels) if use_snake else nn.ELU()


class Conv1d(nn.Conv1d):
    """Conv1d that splits long inputs along time where the backend limits tensor sizes (old macOS MPS).

    `max_len` overrides the automatic limit (tests use it to exercise the split on CPU). The split is
    exact: each piece reads its receptive field from the zero-padded input.
    """

    max_len: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = self.max_len or _device_limit(x)
        if limit is None or x.shape[-1] + 2 * self.padding[0] <= limit:
            return super().forward(x)
        (stride,), (dilation,), (pad,) = self.stride, self.dilation, self.padding
        span = dilation * (self.kernel_size[0] - 1) + 1
        x = F.pad(x, (pad, pad))
        n_out = (x.shape[-1] - span) // stride + 1
        piece = (limit - span) // stride + 1
        outs = [
            F.conv1d(x[..., o * stride : (min(o + piece, n_out) - 1) * stride + span], self.weight, self.bias,
                     stride, 0, dilation)
            for o in range(0, n_out, piece)
        ]
        return torch.cat(outs, dim=-1)


class ConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d with the same exact time split as `Conv1d` where the backend needs it."""

    max_len: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = self.max_len or _device_limit(x)
        (stride,), (kernel,), (pad,) = self.stride, self.kernel_size, self.padding
        length = x.shape[-1]
        if limit is None or (length - 1) * stride + kernel <= limit:
            return super().forward(x)
        # Output position p of the unpadded result sums inputs i with i*stride <= p < i*stride + kernel,
        # so the outputs of inputs [a, b) are complete once `halo` earlier inputs are included.
        halo = math.ceil(kernel / stride) - 1
        piece = (limit - kernel) // stride + 1 - halo
        outs = []
        for a in range(0, length, piece):
            b = min(a + piece, length)
            lead = min(a, halo)
            y = F.conv_transpose1d(x[..., a - lead : b], self.weight, self.bias, stride)
            end = None if b == length else (lead + b - a) * stride
            outs.append(y[..., lead * stride : end])
        full = torch.cat(outs, dim=-1)
        out_len = (length - 1) * stride - 2 * pad + kernel
        return full[..., pad : pad + out_len]


class ResidualUnit(nn.Module):
    """`x + conv1(snake(conv7_dilated(snake(x))))`, length-preserving."""

    def __init__(self, channels: int, dilation: int, use_snake: bool):
        super().__init__()
        self.layers = nn.Sequential(
            activation(use_snake, channels),
            Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation),
            activation(use_snake, channels),
            Conv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).add_(x)


def _residual_units(channels: int, use_snake: bool) -> list[nn.Module]:
    return [ResidualUnit(channels, d, use_snake) for d in (1, 3, 9)]


class EncoderBlock(nn.Module):
    """Three residual units, then a strided conv that downsamples by exactly `stride` (for even strides)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool):
        super().__init__()
        self.layers = nn.Sequential(
            *_residual_units(in_channels, use_snake),
            activation(use_snake, in_channels),
            Conv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                   padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    """A transposed conv that upsamples by exactly `stride` (for even strides), then three residual units."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool):
        super().__init__()
        self.layers = nn.Sequential(
            activation(use_snake, in_channels),
            ConvTranspose1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                            padding=math.ceil(stride / 2)),
            *_residual_units(out_channels, use_snake),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _widths(channels: int, c_mults: tuple[int, ...]) -> list[int]:
    """Stage widths from the input side; stable-audio-tools prepends a x1 stage to `c_mults`."""
    return [m * channels for m in (1, *c_mults)]


class OobleckEncoder(nn.Module):
    """Audio `[B, io, N]` -> pre-bottleneck features `[B, latent_dim, N // prod(strides)]`."""

    def __init__(self, io_channels: int, channels: int, c_mults: tuple[int, ...], strides: tuple[int, ...],
                 latent_dim: int, use_snake: bool):
        super().__init__()
        widths = _widths(channels, c_mults)
        self.layers = nn.Sequential(
            Conv1d(io_channels, widths[0], kernel_size=7, padding=3),
            *(EncoderBlock(widths[i], widths[i + 1], strides[i], use_snake) for i in range(len(strides))),
            activation(use_snake, widths[-1]),
            Conv1d(widths[-1], latent_dim, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    """Latents `[B, latent_dim, T]` -> audio `[B, io, T * prod(strides)]`."""

    def __init__(self, io_channels: int, channels: int, c_mults: tuple[int, ...], strides: tuple[int, ...],
                 latent_dim: int, use_snake: bool, final_tanh: bool):
        super().__init__()
        widths = _widths(channels, c_mults)
        self.layers = nn.Sequential(
            Conv1d(latent_dim, widths[-1], kernel_size=7, padding=3),
            *(DecoderBlock(widths[i], widths[i - 1], strides[i - 1], use_snake)
              for i in range(len(strides), 0, -1)),
            activation(use_snake, widths[0]),
            Conv1d(widths[0], io_channels, kernel_size=7, padding=3, bias=False),
            nn.Tanh() if final_tanh else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
