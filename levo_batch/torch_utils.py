"""Small PyTorch helpers shared by the decoder and the prompt encoders (device choice, weight norm)."""

from __future__ import annotations

import torch


def torch_device(name: str | None = None) -> torch.device:
    """An explicit device, else CUDA, else Apple's MPS, else CPU: every path must run on all three."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """Plain weight from legacy `torch.nn.utils.weight_norm` (dim=0) parameters `g * v / ||v||`.

    The norm runs over every dim but the first, in float32, which is also right for ConvTranspose1d
    weights, whose dim 0 is the input channels (upstream normalises over that dim too).
    """
    v = weight_v.float()
    norm = v.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1))
    return (weight_g.float() * v / norm).to(weight_v.dtype)
