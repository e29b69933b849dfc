"""Prompt audio -> LM prompt tokens: row 0 (1rvq, mixture) and rows 1/2 (septoken, vocal / bgm stems).

Both upstream tokenisers (`generate_1rvq.Tango.sound2code`, `generate_septoken.Tango.sound2code`) share one
recipe, implemented once here: limit the stream's peak to 0.8, tile it to whole 40-s segments, mix each segment
to mono, resample 48 -> 24 kHz, take one MusicFM hidden state and quantise it with a cosine-nearest codebook.

Two deliberate differences from upstream, neither of which changes a token:
- upstream tiles a clip of exactly k x 40 s into k + 1 segments and encodes them all; segments are encoded
  independently, so we encode only those that reach the returned `int(N / 1920) + 1` codes (a 10-s prompt
  costs one MusicFM pass instead of two);
- upstream divides each segment's channels again by their peak over 0.9; after the 0.8 limit that is a no-op.
The encoders run in float32 by default (never TF32): the cost is small next to the decoder, and lower precision
flips near-tie codes (bf16 changes ~10 % of them on the tiny random models; see bench/bench_prompt_encoders.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from levo_batch.audio import resample_kernel
from levo_batch.codec.musicfm import MusicFM, no_tf32
from levo_batch.codec.vq import VQ_KEYS, SingleVQ
from levo_batch.codec.weights import SafetensorsDict, geometry_beside
from levo_batch.contracts import FRAME_RATE, SAMPLE_RATE
from levo_batch.errors import first_few
from levo_batch.torch_utils import torch_device

PEAK_LIMIT = 0.8
SEGMENT_SAMPLES = 40 * SAMPLE_RATE
SEGMENT_FRAMES = 40 * FRAME_RATE
BATCH_SIZE = 8
RESAMPLE_KEY = "rsq48tobestrq.kernel"
CONFIG_FILE = "levo_encoder.json"


def config_for(weights: Path) -> dict | None:
    """The conformer geometry override beside `weights`, if any.

    Attention heads cannot be read off the weights; official runtimes have no such file (the real geometry is
    the default), tiny test models ship one with their wav2vec2-conformer config.
    """
    return geometry_beside(weights, CONFIG_FILE)


def limit_peak(x: torch.Tensor, threshold: float = PEAK_LIMIT) -> torch.Tensor:
    """Scale `[C, N]` audio down so its peak over all channels is at most `threshold` (never up)."""
    peak = x.abs().max()
    return x / (peak / threshold) if peak > threshold else x


def output_length(n_samples: int) -> int:
    """Codes returned for `n_samples` at 48 kHz: `int(seconds * 25) + 1` (251 for 10 s), as upstream."""
    return int(n_samples / float(SAMPLE_RATE) * FRAME_RATE) + 1


def tile_segments(x: torch.Tensor) -> torch.Tensor:
    """`[C, N]` -> `[S, C, 1_920_000]`: upstream's looping of a clip into whole 40-s segments.

    The clip is doubled until it reaches 40 s, doubled once more and cut to `len // 40 s + 1` segments.
    """
    while x.shape[-1] < SEGMENT_SAMPLES:
        x = torch.cat([x, x], -1)
    n_segments = x.shape[-1] // SEGMENT_SAMPLES + 1
    x = torch.cat([x, x], -1)[:, : n_segments * SEGMENT_SAMPLES]
    return x.reshape(x.shape[0], n_segments, SEGMENT_SAMPLES).transpose(0, 1)


def resample_48k_to_24k(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """`[B, N]` at 48 kHz -> `[B, ceil(N / 2)]` at 24 kHz with torchaudio's windowed-sinc kernel `[1, 1, K]`."""
    half = (kernel.shape[-1] - 2) // 2
    y = F.conv1d(F.pad(x[:, None], (half, half + 2)), kernel, stride=2)[:, 0]
    return y[:, : math.ceil(x.shape[-1] / 2)]


def stereo(x: torch.Tensor, what: str) -> torch.Tensor:
    """Validate prompt audio where it enters: float `[2, N]`, N > 0."""
    if x.ndim != 2 or x.shape[0] != 2 or x.shape[1] == 0:
        raise ValueError(f"{what} must be stereo 48 kHz audio of shape (2, N) with N > 0, got {tuple(x.shape)}; "
                         "duplicate a mono signal to two channels")
    return x.float()


class _TokenEncoder:
    """MusicFM + the codebooks of one checkpoint; subclasses say which layers and codebooks they use."""

    VQ_PREFIXES: tuple[str, ...]
    LAYERS: tuple[int, ...]
    OFFICIAL_FILE: str

    def __init__(self, musicfm: MusicFM, vqs: list[SingleVQ], kernel: torch.Tensor, batch_size: int = BATCH_SIZE):
        self.musicfm = musicfm
        self.vqs = vqs
        self.kernel = kernel
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.kernel.device

    @classmethod
    def checkpoint_keys(cls) -> list[str]:
        """Tensors the checkpoint must hold; the resample kernel and rotary `inv_freq` are also read if present."""
        vq = [p + "quantizers.0." + k for p in cls.VQ_PREFIXES for k in VQ_KEYS]
        return MusicFM.checkpoint_keys(max(cls.LAYERS)) + vq

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, config: Mapping | None = None):
        """Build from upstream tensor names (`bestrq.model.*`, `<vq>.quantizers.0.*`, `rsq48tobestrq.kernel`).

        `config`: wav2vec2 config dict for the attention head count (default: upstream's, 16 heads).
        `dtype`: MusicFM compute precision (default float32); the mel front-end runs in float64 and the codebook
        search in float32 regardless.
        """
        missing = [k for k in cls.checkpoint_keys() if k not in sd]
        if missing:
            source = f"{sd!r}" if isinstance(sd, SafetensorsDict) else "the state dict"
            raise KeyError(f"{source} lacks {len(missing)} tensor(s) the prompt encoder needs: "
                           f"{first_few(missing, 6)}. "
                           f"Is it the official {cls.OFFICIAL_FILE}? Re-download it if it is truncated.")
        device = torch_device(str(device) if device is not None else None)
        musicfm = MusicFM.from_state_dict(sd, max(cls.LAYERS), w2v2=config, device=device,
                                          dtype=dtype or torch.float32)
        vqs = [SingleVQ.from_state_dict(sd, p, device=device) for p in cls.VQ_PREFIXES]
        kernel = sd[RESAMPLE_KEY] if RESAMPLE_KEY in sd else resample_kernel(SAMPLE_RATE, SAMPLE_RATE // 2)[0]
        return cls(musicfm, vqs, kernel.float().to(device))

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
             config: Mapping | None = None):
        """From the official safetensors file, reading only the tensors listed above (never the rest of the file)."""
        return cls.from_state_dict(SafetensorsDict(Path(path)), device=device, dtype=dtype, config=config)

    def _segments(self, x: torch.Tensor) -> torch.Tensor:
        """The 40-s segments of a peak-limited `[2, N]` stream that reach the first `output_length(N)` codes."""
        needed = math.ceil(output_length(x.shape[-1]) / SEGMENT_FRAMES)
        return tile_segments(x)[:needed]

    def _codes(self, segments: torch.Tensor, layer: int, vq: SingleVQ) -> torch.Tensor:
        """`[S, 2, 1_920_000]` segments -> `[S * 1000]` codes, `batch_size` segments per MusicFM pass."""
        codes = []
        for batch in segments.split(self.batch_size):
            mono = (batch[:, 0] + batch[:, 1]) / 2.0
            with no_tf32():
                wav24k = resample_48k_to_24k(mono, self.kernel)
            hidden = self.musicfm(wav24k, layer)
            codes.append(vq.to_codes(hidden.transpose(1, 2).float()))
        return torch.cat(codes).reshape(-1).cpu()


class SepTokenEncoder(_TokenEncoder):
    """LM prompt rows 1 (vocal, MusicFM layer 7) and 2 (bgm, layer 3) from `ckpt/model_septoken`."""

    VQ_PREFIXES = ("rvq_bestrq_emb.", "rvq_bestrq_bgm_emb.")
    LAYERS = (7, 3)
    OFFICIAL_FILE = "ckpt/model_septoken/model_2.safetensors"

    def encode(self, vocal: torch.Tensor, bgm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """48 kHz stereo stems `[2, N]` -> (vocal, bgm) int64 codes `[int(N / 1920) + 1]` each, on the CPU.

        Each stem is peak-limited on its own, then both are cut to the shorter one, as upstream.
        """
        vocal = limit_peak(stereo(vocal, "vocal prompt").to(self.device))
        bgm = limit_peak(stereo(bgm, "bgm prompt").to(self.device))
        n = min(vocal.shape[-1], bgm.shape[-1])
        length = output_length(n)
        return tuple(
            self._codes(self._segments(stem[:, :n]), layer, vq)[:length]
            for stem, layer, vq in zip((vocal, bgm), self.LAYERS, self.vqs)
        )


class RVQ1Encoder(_TokenEncoder):
    """LM prompt row 0 (the mixture, MusicFM layer 6) from `ckpt/model_1rvq`.

    Upstream passes 3 segments per MusicFM call here (8 for septoken); segments are independent, so we use one
    `batch_size` for both.
    """

    VQ_PREFIXES = ("rvq_bestrq_emb.",)
    LAYERS = (6,)
    OFFICIAL_FILE = "ckpt/model_1rvq/model_2_fixed.safetensors"

    def encode(self, mix: torch.Tensor) -> torch.Tensor:
        """48 kHz stereo mixture `[2, N]` -> int64 codes `[int(N / 1920) + 1]`, on the CPU."""
        mix = limit_peak(stereo(mix, "prompt mixture").to(self.device))
        return self._codes(self._segments(mix), self.LAYERS[0], self.vqs[0])[: output_length(mix.shape[-1])]
