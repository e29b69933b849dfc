"""Audio files for tests: write them the way real prompt clips come (AAC in an MP4 container, with PyAV), and
read a prompt file the way the prompt preparer does."""

from pathlib import Path

import av
import numpy as np

from levo_batch.audio import prompt_window, read_audio


def load_prompt_audio(path: str | Path) -> np.ndarray:
    """A prompt file as upstream's `Separator.load_audio` sees it, made stereo: `(2, N)` float32 @48 kHz."""
    return prompt_window(*read_audio(path))

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
