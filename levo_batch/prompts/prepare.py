"""Turning a job's prompt (reference audio, auto-prompt genre, or none) into LM tokens and decoder audio.

Mirrors upstream's generate.py: a prompt file is separated (htdemucs), the mixture and the vocal stem are
brought to 48 kHz and cut to their first 10 s, `bgm = mixture - vocal`; row 0 of the `[3, L]` tokens comes
from the 1rvq encoder on the mixture, rows 1/2 from the septoken encoder on (vocal, bgm), and the raw
vocal/bgm stems go to the decoder. An auto prompt is tokens only (upstream never gives the decoder audio for
it). Models load lazily, once, and only when a job needs them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from levo_batch.audio import AudioError, prompt_window, read_audio, resample, to_stereo
from levo_batch.codec.septoken_encoder import config_for
from levo_batch.codec.weights import geometry_beside
from levo_batch.contracts import SAMPLE_RATE, Prompt, PromptAudio
from levo_batch.errors import PromptError
from levo_batch.prompts.autoprompt import AutoPromptLibrary
from levo_batch.prompts.separation import HTDEMUCS_HPARAMS, SEPARATION_RATE, Separator
from levo_batch.runtime import RuntimePaths
from levo_batch.torch_utils import torch_device

if TYPE_CHECKING:
    from levo_batch.codec.septoken_encoder import RVQ1Encoder, SepTokenEncoder
    from levo_batch.jobs import Job

MIN_PROMPT_SECONDS = 1.0
"""Shorter prompt files are rejected: a few frames of prompt give the LM and the decoder nothing to follow."""
SILENCE_RMS = 1e-4
"""-80 dBFS: below this the mono mix is silence (or channels in antiphase), which demucs' standardisation
(division by the mix's standard deviation) would turn into noise or NaN."""


DEMUCS_CONFIG_FILE = "levo_demucs.json"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/levo_batch` (else `~/.cache/levo_batch`), where separated vocal stems are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "levo_batch"


class PromptPreparer:
    """Prepares every job's `Prompt`, holding the separator, the two token encoders and the auto-prompt library.

    `encoder_config` is passed to the encoders' loaders (attention heads cannot be read from the weights;
    None means the real geometry) and `demucs_hparams` replaces the htdemucs geometry: both exist for
    non-standard checkpoints such as the tiny random ones of the tests, and default to the JSON files
    `septoken_encoder.CONFIG_FILE` beside the septoken weights and `DEMUCS_CONFIG_FILE` beside htdemucs.pth when those
    exist (official runtimes have neither; the demucs file lists only the values that differ). `release()` frees the models once every prompt is prepared
    (upstream drops them before building the LM too).
    """

    def __init__(
        self, runtime: RuntimePaths, *, device: str | torch.device | None = None, cache_dir: Path | None = None,
        encoder_config: dict | None = None, demucs_hparams: dict | None = None,
    ):
        self.runtime = runtime
        self.device = torch_device(str(device) if device is not None else None)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.encoder_config = encoder_config or config_for(runtime.septoken)
        overrides = geometry_beside(runtime.htdemucs, DEMUCS_CONFIG_FILE)
        self.demucs_hparams = demucs_hparams or (dict(HTDEMUCS_HPARAMS, **overrides) if overrides else None)
        self._library: AutoPromptLibrary | None = None
        self._separator: Separator | None = None
        self._encoders: tuple[RVQ1Encoder, SepTokenEncoder] | None = None

    def prepare(self, job: "Job", seed: int) -> Prompt:
        """The job's prompt; `seed` (the song seed) picks the auto-prompt entry. Raises PromptError per job."""
        if job.prompt_audio_path is not None:
            return self._from_audio(Path(job.prompt_audio_path))
        if job.auto_prompt_audio_type is not None:
            tokens, info = self.library.choose(job.auto_prompt_audio_type, job.gt_lyric, seed)
            return Prompt(tokens=tokens, audio=None, info=info)
        return Prompt(tokens=None)

    def release(self) -> None:
        """Drop the separator and encoders (about 2 GB in float32) and return their device memory."""
        self._separator = None
        self._encoders = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    @property
    def library(self) -> AutoPromptLibrary:
        if self._library is None:
            self._library = AutoPromptLibrary.load(self.runtime.auto_prompt)
        return self._library

    @property
    def separator(self) -> Separator:
        if self._separator is None:
            self._separator = Separator.load(
                self.runtime.require(self.runtime.htdemucs, "htdemucs weights"),
                self.runtime.require(self.runtime.htdemucs_yaml, "htdemucs config"),
                device=self.device, cache_dir=self.cache_dir / "separation", hparams=self.demucs_hparams,
            )
        return self._separator

    @property
    def encoders(self) -> tuple["RVQ1Encoder", "SepTokenEncoder"]:
        if self._encoders is None:
            from levo_batch.codec.septoken_encoder import RVQ1Encoder, SepTokenEncoder

            rvq1 = self.runtime.require(self.runtime.rvq1, "1rvq tokenizer checkpoint")
            sep = self.runtime.require(self.runtime.septoken, "septoken checkpoint")
            # float32 like upstream: the codes are argmax decisions that half precision can flip.
            self._encoders = (
                RVQ1Encoder.load(rvq1, device=self.device, dtype=torch.float32, config=self.encoder_config),
                SepTokenEncoder.load(sep, device=self.device, dtype=torch.float32, config=self.encoder_config),
            )
        return self._encoders

    def stems(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """`(full, vocal, bgm)` `(2, N)` float32 at 48 kHz, first 10 s, as upstream's `Separator.run`, + info."""
        try:
            mix, sr = read_audio(path)
        except AudioError as e:
            raise PromptError(f"prompt audio: {e}") from e
        if mix.shape[1] < MIN_PROMPT_SECONDS * sr:
            raise PromptError(
                f"prompt audio {path} is {mix.shape[1] / sr:.2f} s long; give at least {MIN_PROMPT_SECONDS:g} s "
                "(upstream uses the first 10 s)"
            )
        if float(np.std(to_stereo(mix).mean(0), dtype=np.float64)) < SILENCE_RMS:
            raise PromptError(
                f"prompt audio {path} is silent (below -80 dBFS, or its channels cancel out); give a real clip"
            )
        vocal44 = self.separator.vocals(mix, sr)
        full = prompt_window(mix, sr)
        vocal = resample(torch.from_numpy(vocal44), SEPARATION_RATE, SAMPLE_RATE)[:, : full.shape[1]].numpy()
        # Lengths can differ by a sample through the two resamplings when the file is shorter than 10 s.
        n = min(full.shape[1], vocal.shape[1])
        full, vocal = full[:, :n], vocal[:, :n]
        info = {"prompt_audio": {"path": str(path), "sha256": hashlib.sha256(mix.tobytes()).hexdigest()[:16]}}
        return full, vocal, full - vocal, info

    @torch.no_grad()
    def _from_audio(self, path: Path) -> Prompt:
        full, vocal, bgm, info = self.stems(path)
        rvq1, sep = self.encoders
        mixed = rvq1.encode(self._tensor(full)).cpu()
        vocal_codes, bgm_codes = (c.cpu() for c in sep.encode(self._tensor(vocal), self._tensor(bgm)))
        tokens = torch.stack([mixed, vocal_codes, bgm_codes]).numpy().astype(np.int64)
        return Prompt(tokens=tokens, audio=PromptAudio(vocal=vocal, bgm=bgm), info=info)

    def _tensor(self, audio: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(audio)).to(self.device)
