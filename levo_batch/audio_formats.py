"""Audio files libsndfile cannot read (m4a/aac, wma, ...), decoded by FFmpeg through PyAV.

Upstream loads prompts with `torchaudio.load`, whose FFmpeg backend reads m4a/aac; wav/flac/ogg/mp3 go through
libsndfile here (bit-identical to torchaudio's integer scaling), everything else through the same FFmpeg
decoders, at the file's own sample rate: the 48 kHz resampling and the first-10-s cut happen afterwards,
exactly as for the other formats. Kept free of torch so that job validation stays quick.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class UndecodableAudio(ValueError):
    """FFmpeg cannot decode the file either; the message says why."""


def decode(path: Path) -> tuple[np.ndarray, int]:
    """`(C, N)` float32 samples in [-1, 1] and the sample rate of the file's first audio stream."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = _audio_stream(container, path)
            rate = stream.codec_context.sample_rate
            to_float = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
            parts = [f.to_ndarray() for frame in container.decode(stream) for f in to_float.resample(frame)]
            parts += [f.to_ndarray() for f in to_float.resample(None)]
    except av.FFmpegError as e:
        raise UndecodableAudio(f"FFmpeg cannot decode it either ({e})") from e
    if not parts:
        return np.zeros((1, 0), dtype=np.float32), rate
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32), int(rate)


def has_samples(path: Path) -> bool:
    """Whether the file decodes to at least one sample (reads only up to the first non-empty frame)."""
    import av

    try:
        with av.open(str(path)) as container:
            return any(frame.samples > 0 for frame in container.decode(_audio_stream(container, path)))
    except av.FFmpegError as e:
        raise UndecodableAudio(f"FFmpeg cannot decode it either ({e})") from e


def _audio_stream(container, path: Path):
    if not container.streams.audio:
        raise UndecodableAudio(f"{path} has no audio stream")
    return container.streams.audio[0]
