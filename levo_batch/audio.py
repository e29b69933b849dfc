"""Reading audio files and resampling them exactly as upstream's torchaudio calls do.

Upstream resamples with `torchaudio.functional.resample` (prompt files to 48 kHz) and
`torchaudio.transforms.Resample` (48 -> 24 kHz in front of MusicFM). torchaudio is not a dependency of ours,
so the same band-limited sinc interpolation (Hann window, 6 zero crossings, roll-off 0.99) is rebuilt here in
torch, operation for operation, because prompt tokens are argmax decisions that flip on tiny differences.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from levo_batch.audio_formats import UndecodableAudio, decode
from levo_batch.contracts import SAMPLE_RATE

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
PROMPT_SECONDS = 10
"""Upstream keeps the first 10 s of a prompt (`prompt_len` of the LM: 250 frames at 25 Hz)."""


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what is wrong with it."""


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """`(C, N)` float -> `(N, C)` int16 exactly as upstream's FLAC writer (torchaudio 2.6's FFmpeg backend,
    libswresample) converts: `clip_int16(lrintf(x * 32768))`, i.e. scale by 2^15, round half to even, saturate.
    Clamping first changes nothing but is explicit."""
    scaled = np.clip(audio.astype(np.float32), -1.0, 1.0) * np.float32(32768)
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int16).T


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """`(C, N)` float32 samples in [-1, 1] and the sample rate of an audio file.

    wav/flac/ogg/mp3 are read by libsndfile, integer PCM scaled by 1/32768 like `torchaudio.load`, so prompt
    waveforms match upstream's bit for bit; other formats (m4a/aac, ...) are decoded by FFmpeg, as upstream's
    torchaudio does (`levo_batch.audio_formats`).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist (or is not a file)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        try:
            decoded, sr = decode(path)
        except UndecodableAudio as ffmpeg:
            raise AudioError(
                f"cannot read audio file {path}: {e}; {ffmpeg}. Convert it to WAV or FLAC "
                "(e.g. `ffmpeg -i in.m4a out.flac`)."
            ) from e
        data = decoded.T
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"audio file {path} contains no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} contains NaN or infinite samples (a broken float file); re-export it")
    return np.ascontiguousarray(data.T), int(sr)


def resample_kernel(
    sr_in: int, sr_out: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, int]:
    """Polyphase sinc kernel `[new, 1, 2*width + orig]` for the gcd-reduced rates, and its half-width.

    `dtype=None` computes in float64 and returns float32 (what `transforms.Resample` stores, e.g. upstream's
    `rsq48tobestrq.kernel`); a dtype computes in that dtype (what `functional.resample` does with the
    waveform's dtype). Both orders of operations follow torchaudio so the float32 results agree bitwise.
    """
    gcd = math.gcd(sr_in, sr_out)
    orig, new = sr_in // gcd, sr_out // gcd
    base_freq = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=dtype or torch.float64, device=device)[None, None] / orig
    # Integer arange divided by an int lands in the default float dtype before meeting idx: keep that order.
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + idx
    t = (t * base_freq).clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel = kernel * (window * (base_freq / orig))
    return kernel.to(dtype or torch.float32), width


def apply_resample_kernel(x: torch.Tensor, sr_in: int, sr_out: int, kernel: torch.Tensor, width: int) -> torch.Tensor:
    """Resample `(..., N)` with a kernel from `resample_kernel`: one strided conv1d, then cut to length.

    The output length is `ceil(N * sr_out / sr_in)` evaluated in float32, as torchaudio does (it can be one
    sample shorter than the exact ceiling for long inputs).
    """
    gcd = math.gcd(sr_in, sr_out)
    orig, new = sr_in // gcd, sr_out // gcd
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    n = flat.shape[-1]
    out = F.conv1d(F.pad(flat, (width, width + orig))[:, None], kernel.to(flat), stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = int(np.ceil(np.float32(new * n / orig)))
    return out[:, :target].reshape(shape[:-1] + (-1,))


def resample(x: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """`torchaudio.functional.resample(x, sr_in, sr_out)` with its defaults (kernel computed in x's dtype)."""
    if sr_in == sr_out:
        return x
    kernel, width = resample_kernel(sr_in, sr_out, dtype=x.dtype, device=x.device)
    return apply_resample_kernel(x, sr_in, sr_out, kernel, width)


def to_stereo(x: np.ndarray) -> np.ndarray:
    """Mono duplicated to two channels; more than two channels keep the first two (as demucs' loader does).

    Upstream itself only works for mono and stereo prompts: the tokenizers mix `(ch0 + ch1) / 2` and
    `bgm = full - vocal` broadcasts a mono mixture against the stereo stem, which duplication reproduces.
    """
    if x.shape[0] == 1:
        return np.repeat(x, 2, axis=0)
    return x[:2]


def prompt_window(x: np.ndarray, sr: int, seconds: float = PROMPT_SECONDS) -> np.ndarray:
    """`(2, <= seconds*48k)` float32 at 48 kHz: resample the whole signal, then keep its beginning (upstream order)."""
    wav = resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), sr, SAMPLE_RATE)
    return to_stereo(wav[:, : int(seconds * SAMPLE_RATE)].numpy())
