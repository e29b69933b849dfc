"""Meta's Audiobox Aesthetics scores (CE, CU, PC, PQ): the aesthetic axes LeVo 2 reports.

The model class and weights come from the `audiobox-aesthetics` package and its hub repo. Its own inference
wrapper reads files through torchaudio's I/O, which newer torchaudio releases hand to torchcodec (not
installed here), so the few steps around the model are restated from the package's published inference:
resample to 16 kHz, average the channels, cut 10 s windows every 10 s (the last one zero-padded and masked),
predict each axis per window, undo the per-axis target normalisation, and average the windows weighted by
how much real audio each holds.
"""

from __future__ import annotations

import numpy as np
import torch

from ..audio import resample
from ..errors import LevoError
from ..progress import log

AXES = ("CE", "CU", "PC", "PQ")
"""Content enjoyment, content usefulness, production complexity, production quality (each about 1 to 10)."""
HUB_REPO = "facebook/audiobox-aesthetics"
MODEL_SAMPLE_RATE = 16000
WINDOW_SECONDS = 10
WINDOWS_PER_BATCH = 4
"""Windows run through WavLM at once: bounds memory on long songs (results do not depend on it)."""


class AestheticsScorer:
    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_hub(cls, device: str | None = None) -> "AestheticsScorer":
        try:
            from audiobox_aesthetics.model.aes import AesMultiOutput
        except ImportError as exc:
            raise LevoError(f"aesthetics need audiobox-aesthetics ({exc}); pip install 'levo-batch[eval]'") from exc
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        log(f"loading aesthetics model {HUB_REPO} (the first use downloads it into the Hugging Face cache)")
        try:
            model = AesMultiOutput.from_pretrained(HUB_REPO)
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            raise LevoError(
                f"could not download the aesthetics model {HUB_REPO} ({type(exc).__name__}); where there is "
                f"network run `hf download {HUB_REPO}` (or set HF_HOME to a cache that has it), or pass "
                f"--no-aesthetics"
            ) from exc
        return cls(model, device or _default_device())

    @torch.inference_mode()
    def score(self, audio: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Axis -> score of `(C, N)` float audio."""
        wav = resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), sample_rate,
                       MODEL_SAMPLE_RATE).mean(dim=0)
        windows, masks, weights = _windows(wav)
        preds = {axis: [] for axis in AXES}
        for start in range(0, len(windows), WINDOWS_PER_BATCH):
            batch = {"wav": windows[start:start + WINDOWS_PER_BATCH].unsqueeze(1).to(self.device),
                     "mask": masks[start:start + WINDOWS_PER_BATCH].unsqueeze(1).to(self.device)}
            out = self.model(batch)
            for axis in AXES:
                preds[axis].append(out[axis].float().cpu())
        scores = {}
        for axis in AXES:
            norm = self.model.target_transform[axis]
            values = torch.cat(preds[axis]) * norm["std"] + norm["mean"]
            scores[axis] = float((values * weights).sum() / weights.sum())
        return scores


def _windows(wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[W, L]` zero-padded windows, their `[W, L]` masks of real samples and `[W]` real-audio shares."""
    length = WINDOW_SECONDS * MODEL_SAMPLE_RATE
    count = max(1, -(-wav.shape[-1] // length))
    padded = torch.nn.functional.pad(wav, (0, count * length - wav.shape[-1]))
    real = torch.arange(count * length) < wav.shape[-1]
    weights = real.reshape(count, length).sum(dim=1).float() / length
    return padded.reshape(count, length), real.reshape(count, length), weights


def _default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
