"""Transcribing a song with faster-whisper (CTranslate2 Whisper), so its lyrics can be scored.

`Transcriber` is the seam: evaluation only needs `transcribe(audio_16k_mono, language) -> text`, so another
ASR (or a test double) plugs in without touching the rest. The Whisper settings are fixed and documented
because they move the error rates: beam search of 5, no voice-activity filter (it is trained on speech and
cuts sung passages), no conditioning on the previous window (it makes Whisper repeat itself over choruses),
and for Chinese a simplified-Chinese initial prompt (otherwise Whisper often writes traditional characters,
which would count as CER errors though PER is unaffected).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import LevoError
from ..progress import log

ASR_SAMPLE_RATE = 16000
DEFAULT_ASR_MODEL = "large-v3"
ZH_INITIAL_PROMPT = "以下是简体中文的歌词。"


class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, language: str) -> str:
        """Text sung in `audio` (mono float32 at 16 kHz); `language` is `"zh"` or `"en"`."""


class WhisperTranscriber:
    """faster-whisper's `WhisperModel`: a size (`large-v3`), a hub id, or a local CTranslate2 model folder."""

    def __init__(self, model: str = DEFAULT_ASR_MODEL, device: str | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise LevoError(f"ASR needs faster-whisper ({exc}); pip install 'levo-batch[eval]'") from exc
        self.name = model
        first_use = "" if Path(model).is_dir() else "; the first use downloads it into the Hugging Face cache"
        log(f"loading ASR model {model} (faster-whisper{first_use})")
        try:
            self.model = WhisperModel(model, device=_ctranslate2_device(device))
        except Exception as exc:
            if _is_download_failure(exc):
                raise LevoError(
                    f"could not download the ASR model {model!r} ({type(exc).__name__}); where there is network "
                    f"run `hf download {_hub_repo(model)}` (or set HF_HOME to a cache that has it), or pass "
                    f"--asr PATH to a CTranslate2 Whisper folder, or --asr none to skip lyric accuracy"
                ) from exc
            raise

    def transcribe(self, audio: np.ndarray, language: str) -> str:
        segments, _ = self.model.transcribe(
            audio, language=language, beam_size=5, vad_filter=False, condition_on_previous_text=False,
            initial_prompt=ZH_INITIAL_PROMPT if language == "zh" else None)
        return " ".join(segment.text.strip() for segment in segments)


def _ctranslate2_device(device: str | None) -> str:
    """CTranslate2 knows `cpu`, `cuda` and `auto`; torch-style names (`cuda:1`, `mps`) are mapped onto them."""
    if device is None:
        return "auto"
    return "cuda" if device.startswith("cuda") else "cpu"


def _hub_repo(model: str) -> str:
    from faster_whisper import utils

    return getattr(utils, "_MODELS", {}).get(model, model)


def _is_download_failure(exc: Exception) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return isinstance(exc, (LocalEntryNotFoundError, HfHubHTTPError, OSError, ConnectionError))
