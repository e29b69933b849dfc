"""The contracts between the pipeline and its model stages.

The pipeline (jobs -> store -> LM -> decoder -> outputs) only talks to the models through these small
interfaces, so the MLX LM, the PyTorch decoder, the prompt encoders and the deterministic test doubles in
`tests/` are interchangeable. Arrays crossing these boundaries are numpy, never framework tensors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from .jobs import Job
    from .preflight import Needs

SAMPLE_RATE = 48000
FRAME_RATE = 25
DEFAULT_SEED = 0
"""The run seed when none is given (`--seed`)."""


def derive_seed(*parts: object) -> int:
    """A non-negative 63-bit seed from sha256 of the parts joined by ":": the same on every platform and run."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def song_seed(base_seed: int, idx: str) -> int:
    """Per-song seed from the run seed and the idx alone, so a song never depends on its batch mates."""
    return derive_seed(base_seed, idx)


@dataclass
class SongRequest:
    """One song for the LM phase.

    `lyrics` and `descriptions` are already normalised exactly as upstream feeds its conditioners
    (see `levo_batch.text.lm_texts`; a v1 song without description has None). `prompt_tokens` is `[3, n]`
    (full prompt) or `[1, n]` (mixed row only) int64 codes, or None. `resume` is the sampler state last given to `TokenSink.checkpoint` for this
    song (None: start from scratch).
    """

    idx: str
    lyrics: str
    descriptions: str | None
    prompt_tokens: np.ndarray | None
    seed: int
    resume: dict[str, np.ndarray] | None = None


class TokenSink(Protocol):
    """Receives the LM's results; the pipeline implements it on top of the token store."""

    def checkpoint(self, idx: str, state: dict[str, np.ndarray]) -> None:
        """A resumable mid-song state (written atomically before returning)."""

    def finished(self, idx: str, tokens: np.ndarray) -> None:
        """Final `[3, T]` codes after upstream's EOS cut."""

    def progress(self, idx: str, step: int, total: int) -> None:
        """Step `step` of at most `total` pattern steps of song `idx` is done."""


class TokenGenerator(Protocol):
    """The LM phase: turns songs into tokens, batching them as it sees fit."""

    def fingerprint(self) -> dict:
        """What determines the tokens besides the song itself (model hash, sampling parameters, ...)."""

    def generate(self, songs: Sequence[SongRequest], sink: TokenSink) -> None:
        """Generate every song, reporting through `sink`; songs may finish in any order."""


@dataclass
class PromptAudio:
    """Raw prompt stems at 48 kHz, `(2, N)` float32 each, as upstream hands them to the decoder."""

    vocal: np.ndarray
    bgm: np.ndarray


@dataclass
class DecodeRequest:
    """One song for the decoder phase. `tokens` is the LM's `[3, T]` output (row 0 is never decoded);
    `gen_type` is a key of `levo_batch.gen_types.GEN_TYPES`."""

    idx: str
    tokens: np.ndarray
    gen_type: str
    seed: int
    prompt_audio: PromptAudio | None = None


class AudioDecoder(Protocol):
    """The decoder phase: loaded once, decodes many songs."""

    sample_rate: int

    def fingerprint(self) -> dict:
        """What determines the audio besides the request."""

    def decode(self, songs: Sequence[DecodeRequest]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Yield `(idx, stems)` as songs complete: the stems of the song's generation type
        (`levo_batch.gen_types`), each `(2, N)` float32 audio."""


@dataclass
class Prompt:
    """What a job's prompt contributes: LM tokens, decoder audio, and facts recorded in the output jsonl."""

    tokens: np.ndarray | None
    audio: PromptAudio | None = None
    info: dict = field(default_factory=dict)


class PromptSource(Protocol):
    def prepare(self, job: Job, seed: int) -> Prompt: ...

    def release(self) -> None:
        """Free the separator and encoders: the LM and decoder need the memory next."""


class Stages(Protocol):
    """Factories for the models; each is called at most once per run, only when its phase has work."""

    def check(self, lm: bool) -> list[str]:
        """Up-front problems of the settings (and of the LM checkpoint when `lm`), one line each."""

    def assets(self, needs: Needs) -> list[str]:
        """Missing files among those the pending songs need, one line each."""

    def recipe(self, lm: bool) -> dict:
        """Settings that decide the audio (`"decoder"`, and `"lm"` when `lm`), without loading a model."""

    def lm_version(self) -> str:
        """The checkpoint's text conventions (`levo_batch.lm.config.LM_VERSIONS`), known after `check(True)`."""

    def prompts(self) -> PromptSource: ...

    def generator(self) -> TokenGenerator: ...

    def decoder(self) -> AudioDecoder: ...
