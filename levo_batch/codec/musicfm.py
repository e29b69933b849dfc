"""MusicFM, the BEST-RQ style feature extractor whose hidden states the prompt tokenisers quantise.

Upstream builds the whole 12-layer model (`MusicFM25Hz.get_predictions`) and keeps one hidden state; we build
only the mel front-end, the convolutional subsampler and the conformer layers below the one we need (7 of 12 for
septoken vocal, 6 for the 1rvq row), which is all of the compute that reaches the tokens.

Sizes come from the weight shapes. The attention head count cannot be seen in any shape, so it comes from the
wav2vec2 config upstream ships (`w2v2_config.json`: 16 heads, LayerNorm eps 1e-5, rotary base 10000); pass a
dict with the same keys to override it (the tiny test models use 4 heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from levo_batch.codec.conformer import ConformerLayer, rotary_table

N_FFT = 2048
HOP = 240
SAMPLES_PER_FRAME = 960
"""One 25 Hz output frame: 4 mel hops (the subsampler halves time twice)."""
MEL_MEAN = 6.768444971712967
MEL_STD = 18.417922652295623
"""Upstream's hard-coded log-mel statistics (its `stat_path` file is absent, so these are what it uses)."""

CHECKPOINT_NAMES = {
    "window": "preprocessor_melspec_2048.mel_stft.spectrogram.window",
    "mel_fb": "preprocessor_melspec_2048.mel_stft.mel_scale.fb",
    "inv_freq": "conformer.embed_positions.inv_freq",
}
"""Our buffer name -> checkpoint name, where they differ; every other tensor keeps the checkpoint's name."""


@dataclass(frozen=True)
class MusicFMConfig:
    n_layers: int
    n_mels: int = 128
    conv_dim: int = 512
    dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    conv_kernel: int = 31
    layer_norm_eps: float = 1e-5
    rotary_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_weights(cls, sd: Mapping[str, torch.Tensor], prefix: str, n_layers: int,
                     w2v2: Mapping | None = None) -> "MusicFMConfig":
        """Dims from tensor shapes; heads / eps / rotary base from a wav2vec2 config dict (real defaults)."""
        w2v2 = w2v2 or {}
        layer = f"{prefix}conformer.layers.0."
        return cls(
            n_layers=n_layers,
            n_mels=sd[prefix + CHECKPOINT_NAMES["mel_fb"]].shape[1],
            conv_dim=sd[prefix + "conv.conv.0.conv1.weight"].shape[0],
            dim=sd[prefix + "conv.linear.weight"].shape[0],
            ffn_dim=sd[layer + "ffn1.intermediate_dense.weight"].shape[0],
            num_heads=int(w2v2.get("num_attention_heads", cls.num_heads)),
            conv_kernel=sd[layer + "conv_module.depthwise_conv.weight"].shape[-1],
            layer_norm_eps=float(w2v2.get("layer_norm_eps", cls.layer_norm_eps)),
            rotary_base=float(w2v2.get("rotary_embedding_base", cls.rotary_base)),
        )


def no_tf32():
    """Context keeping cuDNN's float32 convolutions in true float32 (its default is TF32, a 10-bit mantissa).

    Upstream runs without cuDNN, so its float32 convolutions are exact; TF32 would flip near-tie codes.
    """
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)


def log_mel(wav: torch.Tensor, window: torch.Tensor, mel_fb: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel `[B, n_mels, S / 240]` of 24 kHz audio `[B, S]` (S a multiple of 960).

    torchaudio's MelSpectrogram + AmplitudeToDB in plain torch: power STFT (centred, reflect padding), mel
    filterbank, `10 log10(max(x, 1e-10))`. The last frame (the one centred past the end) is dropped, as upstream.
    """
    spec = torch.stft(wav, N_FFT, hop_length=HOP, win_length=N_FFT, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    mel = torch.matmul(spec.abs().pow(2).transpose(-1, -2), mel_fb).transpose(-1, -2)
    db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
    return (db[..., :-1] - MEL_MEAN) / MEL_STD


class Res2dModule(nn.Module):
    """Strided residual block of two 3x3 convs; the shortcut is a strided 3x3 conv too (eval BatchNorm)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=2)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv3 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=2)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(self.bn3(self.conv3(x)) + y)


class Conv2dSubsampling(nn.Module):
    """Mel `[B, n_mels, T]` -> `[B, T/4, dim]`: frequency and time halved twice, channels flattened per frame."""

    def __init__(self, cfg: MusicFMConfig):
        super().__init__()
        self.conv = nn.Sequential(Res2dModule(1, cfg.conv_dim), Res2dModule(cfg.conv_dim, cfg.conv_dim))
        self.linear = nn.Linear(cfg.conv_dim * (cfg.n_mels // 4), cfg.dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv(mel[:, None])
        b, c, f, t = x.shape
        return self.linear(x.permute(0, 3, 1, 2).reshape(b, t, c * f))


class ConformerStack(nn.Module):
    def __init__(self, cfg: MusicFMConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            ConformerLayer(cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.conv_kernel, cfg.layer_norm_eps)
            for _ in range(cfg.n_layers)
        )


class MusicFM(nn.Module):
    """24 kHz mono audio -> `layer_results[k]` (k = 0: subsampler output; k >= 1: output of conformer layer k-1)."""

    def __init__(self, cfg: MusicFMConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.empty(N_FFT))
        self.register_buffer("mel_fb", torch.empty(N_FFT // 2 + 1, cfg.n_mels))
        self.register_buffer("inv_freq", torch.empty(cfg.head_dim // 2))
        self.conv = Conv2dSubsampling(cfg)
        self.conformer = ConformerStack(cfg)

    @staticmethod
    def checkpoint_keys(n_layers: int, prefix: str = "bestrq.model.") -> list[str]:
        """Checkpoint tensors required for layers `0..n_layers`.

        Not listed: BatchNorm step counters (unused) and `inv_freq`, which is read when present, else recomputed.
        """
        with torch.device("meta"):
            names = MusicFM(MusicFMConfig(n_layers=n_layers)).state_dict()
        return [prefix + CHECKPOINT_NAMES.get(n, n) for n in names
                if not n.endswith("num_batches_tracked") and n != "inv_freq"]

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], n_layers: int, *, prefix: str = "bestrq.model.",
                        w2v2: Mapping | None = None, device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> "MusicFM":
        """Build the first `n_layers` conformer layers from upstream's `bestrq.model.*` tensors.

        The caller checks that every key of `checkpoint_keys` exists. Only those tensors are read. The
        front-end buffers (window, filterbank, rotary frequencies) stay float32 whatever `dtype` is; a missing
        `inv_freq` (some writers do not persist it) is recomputed from the rotary base.
        """
        cfg = MusicFMConfig.from_weights(sd, prefix, n_layers, w2v2)
        if cfg.dim % cfg.num_heads:
            raise ValueError(f"MusicFM width {cfg.dim} is not divisible by num_attention_heads={cfg.num_heads}; "
                             "pass the wav2vec2 config that matches these weights")
        with torch.device("meta"):
            model = cls(cfg)
        state = {}
        for name, meta in model.state_dict().items():
            key = prefix + CHECKPOINT_NAMES.get(name, name)
            if name.endswith("num_batches_tracked"):
                state[name] = torch.zeros((), dtype=torch.long)
            elif name == "inv_freq" and key not in sd:
                state[name] = 1.0 / cfg.rotary_base ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
            else:
                state[name] = sd[key]
            if tuple(state[name].shape) != tuple(meta.shape):
                raise ValueError(f"{key}: shape {tuple(state[name].shape)} does not fit a MusicFM of {cfg} "
                                 f"(expected {tuple(meta.shape)}); is num_attention_heads right?")
            if state[name].is_floating_point():
                keep_fp32 = name in CHECKPOINT_NAMES
                state[name] = state[name].to(device=device, dtype=torch.float32 if keep_fp32 else dtype)
            else:
                state[name] = state[name].to(device=device)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Float32 log-mel computed in float64 (on the CPU for MPS, which has no float64).

        Some bands of real-world frames sit 100+ dB below the frame's loudest band, under float32 FFT rounding:
        upstream's float32 values there are rounding noise that differs between FFT libraries (MKL, pocketfft,
        cuFFT). Float64 makes our tokens independent of the device; the front-end costs little either way.
        """
        device = self.window.device
        work = torch.device("cpu") if device.type == "mps" else device
        mel = log_mel(wav.to(work, torch.float64), self.window.to(work, torch.float64),
                      self.mel_fb.to(work, torch.float64))
        return mel.to(device, torch.float32)

    @torch.inference_mode()
    def forward(self, wav: torch.Tensor, layer: int) -> torch.Tensor:
        """`layer_results[layer]` `[B, S // 960, dim]` for 24 kHz audio `[B, S]` (trailing samples dropped)."""
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"layer {layer} not built: this MusicFM gives layer results 0..{self.cfg.n_layers}")
        wav = wav[..., : wav.shape[-1] // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME]
        dtype = self.conv.linear.weight.dtype
        with no_tf32():
            h = self.conv(self.log_mel(wav).to(dtype))
            cos, sin = (t.to(dtype) for t in rotary_table(self.inv_freq, h.shape[1]))
            for block in self.conformer.layers[:layer]:
                h = block(h, cos, sin)
        return h
