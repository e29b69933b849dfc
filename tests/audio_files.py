"""Write compressed audio files the way real prompt clips come (AAC in an MP4 container), with PyAV."""

from pathlib import Path

import av
import numpy as np

FRAME = 1024
"""AAC frame size: the encoder takes 1024 samples per frame."""


def write_m4a(path: Path, data: np.ndarray, sr: int) -> Path:
    """`(C, N)` float32 in [-1, 1] as AAC in `.m4a` (`.aac` too: the container follows the suffix)."""
    layout = "mono" if data.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=sr)
        stream.layout = layout
        for start in range(0, data.shape[1], FRAME):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + FRAME], dtype=np.float32),
                                               format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sr, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
