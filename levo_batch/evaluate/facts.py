"""Facts about one rendered song that need no model: length, loudness, clipping, silence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP_LEVEL = 32767 / 32768
"""Full scale of the 16-bit FLACs we write: a sample read back at or beyond it was clipped on encoding."""
SILENCE_DBFS = -60.0
SILENCE_FRAME_SECONDS = 0.05


@dataclass(frozen=True)
class AudioFacts:
    duration_s: float
    lufs: float | None
    """Integrated loudness (ITU-R BS.1770-4, pyloudnorm); None for audio too quiet or short to gate."""
    peak_dbfs: float | None
    clipped_fraction: float
    """Share of samples (all channels) at 16-bit full scale."""
    silence_ratio: float
    """Share of 50 ms frames of the channel mean whose RMS is below -60 dBFS."""


def audio_facts(audio: np.ndarray, sample_rate: int) -> AudioFacts:
    """Facts of `(C, N)` float audio in [-1, 1]."""
    import pyloudnorm

    n = audio.shape[-1]
    peak = float(np.abs(audio).max()) if n else 0.0
    lufs = None
    if n >= int(0.4 * sample_rate):  # BS.1770 gates 400 ms blocks; shorter audio has no loudness
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T.astype(np.float64))
        lufs = float(loudness) if np.isfinite(loudness) else None
    return AudioFacts(
        duration_s=n / sample_rate,
        lufs=lufs,
        peak_dbfs=_dbfs(peak),
        clipped_fraction=float(np.mean(np.abs(audio) >= CLIP_LEVEL)) if n else 0.0,
        silence_ratio=silence_ratio(audio.mean(axis=0), sample_rate),
    )


def silence_ratio(mono: np.ndarray, sample_rate: int) -> float:
    frame = max(1, int(SILENCE_FRAME_SECONDS * sample_rate))
    count = len(mono) // frame
    if count == 0:
        return 1.0
    frames = mono[: count * frame].astype(np.float64).reshape(count, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return float(np.mean(rms < 10 ** (SILENCE_DBFS / 20)))


def _dbfs(amplitude: float) -> float | None:
    return 20 * float(np.log10(amplitude)) if amplitude > 0 else None
