"""The ASR path for real: faster-whisper loads a tiny CTranslate2 Whisper written in the release format and
transcribes rendered songs inside `evaluate`; without network, loading fails in one line naming the download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from fakes import FakeStages
from levo_batch.errors import LevoError
from levo_batch.evaluate.aesthetics import AestheticsScorer
from levo_batch.evaluate.asr import WhisperTranscriber
from levo_batch.evaluate.run import EvalOptions, evaluate
from levo_batch.pipeline import RunOptions, run
from tiny_whisper import WORD, write_tiny_whisper


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    return write_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """huggingface_hub as on a machine without network and with an empty cache."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_evaluate_transcribes_with_a_real_faster_whisper_model(tiny_whisper, tmp_path):
    lyrics = {"en": "[verse] Hello ; [chorus] hello there", "zh": "[verse] 漂泊在无尽的沧海"}
    jobs = tmp_path / "lyrics.jsonl"
    jobs.write_text("".join(json.dumps({"idx": k, "gt_lyric": v}, ensure_ascii=False) + "\n"
                            for k, v in lyrics.items()), encoding="utf-8")
    run(RunOptions(jobs, tmp_path / "out"), FakeStages())
    report, _ = evaluate(EvalOptions(tmp_path / "out", asr_model=str(tiny_whisper), aesthetics=False))
    en, zh = report.songs
    assert report.settings["asr"] == str(tiny_whisper)
    assert en["transcript"] == zh["transcript"] == WORD  # the planted chain: <|0.00|> hello <|1.00|>
    assert (en["language"], en["asr_audio"], en["wer_edits"], en["wer_length"]) == ("en", "mix", 2, 3)
    assert (zh["language"], zh["wer_edits"], zh["wer_length"]) == ("zh", 8, 8)


def test_transcriber_uses_the_lyrics_language(tiny_whisper, monkeypatch):
    asr = WhisperTranscriber(str(tiny_whisper), device="cpu")
    calls = []
    real = asr.model.transcribe

    def spy(audio, **options):
        segments, info = real(audio, **options)
        calls.append(info.language)
        return segments, info

    monkeypatch.setattr(asr.model, "transcribe", spy)
    silence = np.zeros(16000, np.float32)
    assert asr.transcribe(silence, "zh") == asr.transcribe(silence, "en") == WORD
    assert calls == ["zh", "en"]


def test_offline_asr_fails_in_one_line_naming_the_download(offline):
    with pytest.raises(LevoError) as err:
        WhisperTranscriber("tiny", device="cpu")
    message = str(err.value)
    assert "\n" not in message and "hf download Systran/faster-whisper-tiny" in message and "--asr none" in message


def test_offline_aesthetics_fail_in_one_line_naming_the_download(offline):
    with pytest.raises(LevoError) as err:
        AestheticsScorer.from_hub("cpu")
    message = str(err.value)
    assert "\n" not in message and "hf download facebook/audiobox-aesthetics" in message
