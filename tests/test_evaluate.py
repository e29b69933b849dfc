"""`levo-batch evaluate` on renders made by the real pipeline (with the stage doubles): songs found, facts,
lyric and aesthetic scores, the three report files, errors, and the command line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import FakeStages
from levo_batch.cli import main
from levo_batch.errors import LevoError
from levo_batch.evaluate.aesthetics import AXES, AestheticsScorer
from levo_batch.evaluate.facts import audio_facts
from levo_batch.evaluate.run import EvalOptions, evaluate
from levo_batch.evaluate.stats import mean_ci
from levo_batch.pipeline import RunOptions, run

EN = "[intro-short] ; [verse] Hello there.Small song ; [chorus] Sing it loud ; [outro-short]"
ZH = "[intro-medium]; [verse] 漂泊在无尽的沧海.寻觅那颗失落的心 ; [inst-medium]"
HEARD = {"en": "Hello there, small song. Sing it proud!", "zh": "漂泊在無盡的滄海，尋覓那顆失落的心"}


class ScriptedTranscriber:
    """Returns a fixed transcript per language and remembers what it was asked to hear."""

    name = "scripted"

    def __init__(self):
        self.heard: list[tuple[int, str, str]] = []

    def transcribe(self, audio: np.ndarray, language: str) -> str:
        self.heard.append((audio.shape, str(audio.dtype), language))
        return HEARD[language]


class MaskShareModel(torch.nn.Module):
    """Stands in for AesMultiOutput's interface (masked 16 kHz windows -> one value per axis): predicts the
    share of real audio in each window, plus the axis number."""

    target_transform = {axis: {"mean": 5.0, "std": 2.0} for axis in AXES}

    def forward(self, batch: dict) -> dict:
        assert batch["wav"].shape[1:] == (1, 160000) and batch["mask"].dtype == torch.bool
        return {axis: batch["mask"].float().mean(dim=(1, 2)) + i for i, axis in enumerate(AXES)}


def write_jobs(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


@pytest.fixture
def render(tmp_path: Path) -> tuple[Path, Path]:
    """A --separate render of an English and a Chinese song, plus an input listing one song never rendered."""
    jobs = write_jobs(tmp_path / "lyrics.jsonl", [{"idx": "en1", "gt_lyric": EN}, {"idx": "zh1", "gt_lyric": ZH}])
    run(RunOptions(jobs, tmp_path / "out", gen_type="separate"), FakeStages())
    write_jobs(jobs, [{"idx": "en1", "gt_lyric": EN}, {"idx": "zh1", "gt_lyric": ZH}, {"idx": "late", "gt_lyric": EN}])
    return tmp_path / "out", jobs


def test_evaluate_writes_reports_with_scores_facts_and_intervals(render):
    save_dir, jobs = render
    asr = ScriptedTranscriber()
    report, out = evaluate(EvalOptions(save_dir, jobs), asr, AestheticsScorer(MaskShareModel()))
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    songs = {song["idx"]: song for song in data["songs"]}
    assert list(songs) == ["en1", "zh1"] and data["missing"] == ["late"]
    assert data["settings"] == {"asr": "scripted", "aesthetics": "audiobox-aesthetics", "device": "auto"}
    en, zh = songs["en1"], songs["zh1"]
    assert (en["language"], zh["language"]) == ("en", "zh")
    assert en["asr_audio"] == zh["asr_audio"] == "vocal"
    assert (en["wer_edits"], en["wer_length"], en["per_edits"], en["per_length"]) == (1, 7, 2, 22)
    assert (zh["per"], zh["cer_edits"], zh["cer_length"]) == (0.0, 6, 16)  # traditional script: PER unaffected
    assert en["transcript"] == HEARD["en"]
    for song in (en, zh):
        seconds = song["duration_s"]
        assert seconds == pytest.approx(int(round(seconds * 25)) / 25)  # whole LM frames of the fake decoder
        assert song["lm_seconds"] >= 0 and song["clipped_fraction"] == 0 and song["silence_ratio"] == 0
        assert song["peak_dbfs"] == pytest.approx(20 * math.log10(0.5), abs=1e-3)
        assert song["lufs"] == pytest.approx(-6.7, abs=0.3)
        # one 10 s window holding the whole song: axis i scores (seconds / 10 + i) * std + mean
        assert [song[axis] for axis in AXES] == pytest.approx([(seconds / 10 + i) * 2 + 5 for i in range(4)])
    # Whisper hears the vocal stem, mono at 16 kHz, in the lyrics' language
    assert [(shape[0], dtype, lang) for shape, dtype, lang in asr.heard] == [
        (round(en["duration_s"] * 16000), "float32", "en"), (round(zh["duration_s"] * 16000), "float32", "zh")]
    per = data["summary"]["per"]
    assert per["n"] == 2 and per["pooled"] == pytest.approx(2 / (22 + zh["per_length"]))
    assert per["mean"] == pytest.approx(1 / 22) and per["ci95_low"] < per["mean"] < per["ci95_high"]
    assert data["metrics"]["per"]["label"] == "PER"

    rows = list(csv.DictReader((out / "report.csv").open(encoding="utf-8")))
    assert [row["idx"] for row in rows] == ["en1", "zh1"]
    assert float(rows[0]["per"]) == pytest.approx(2 / 22) and rows[1]["transcript"] == HEARD["zh"]

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 2 * sum(1 for key in data["summary"] if data["summary"][key]["n"])
    assert "<td title='phoneme error rate (lower is better)'>PER</td><td>2</td>" in page
    assert "without audio: late" in page and "<title>zh1: 0</title>" in page
    assert f"<td style='text-align:left'>{HEARD['zh']}</td></tr>" in page  # the per-song table


def test_aesthetics_average_windows_weighted_by_their_real_audio():
    sr = 48000
    audio = np.full((2, 25 * sr), 0.1, np.float32)  # windows of 10, 10 and 5 s
    scores = AestheticsScorer(MaskShareModel()).score(audio, sr)
    share = (1 * 1 + 1 * 1 + 0.5 * 0.5) / 2.5
    assert [scores[axis] for axis in AXES] == pytest.approx([(share + i) * 2 + 5 for i in range(4)])


def test_mix_is_transcribed_when_there_is_no_vocal_stem(tmp_path):
    jobs = write_jobs(tmp_path / "lyrics.jsonl", [{"idx": "en1", "gt_lyric": EN}])
    run(RunOptions(jobs, tmp_path / "out"), FakeStages())
    report, _ = evaluate(EvalOptions(tmp_path / "out", aesthetics=False), ScriptedTranscriber())
    assert report.songs[0]["asr_audio"] == "mix" and report.missing == []
    assert "CE" not in report.songs[0] and report.summary()["CE"]["n"] == 0


def test_results_are_found_or_the_error_says_what_to_pass(tmp_path, render):
    save_dir, jobs = render
    with pytest.raises(LevoError, match="is not a folder"):
        evaluate(EvalOptions(tmp_path / "nowhere", asr_model=None, aesthetics=False))
    with pytest.raises(LevoError, match=r"holds no finished render of other.jsonl; run `levo-batch generate"):
        evaluate(EvalOptions(save_dir, write_jobs(tmp_path / "other.jsonl", []), None, False))
    (save_dir / "jsonl" / "second.jsonl.jsonl").write_text("")
    with pytest.raises(LevoError, match=r"has 2 result jsonls \(lyrics.jsonl.jsonl, second.jsonl.jsonl\); pass"):
        evaluate(EvalOptions(save_dir, asr_model=None, aesthetics=False))
    (save_dir / "jsonl" / "lyrics.jsonl.jsonl").write_text('{"idx": "a"}\n{oops\n')
    with pytest.raises(LevoError, match=r"lyrics.jsonl.jsonl:2: not valid JSON"):
        evaluate(EvalOptions(save_dir, jobs, None, False))


def test_command_line_without_models(render, capsys):
    save_dir, jobs = render
    assert main(["evaluate", str(save_dir), str(jobs), "--asr", "none", "--no-aesthetics"]) == 0
    err = capsys.readouterr().err
    assert "lufs: mean" in err and "per:" not in err and "without audio (not scored): late" in err
    assert "report.json" in err and (save_dir / "eval" / "report.html").is_file()
    assert main(["evaluate", str(save_dir / "missing"), "--asr", "none"]) == 2
    assert "error: " in capsys.readouterr().err


def test_audio_facts_of_a_tone_with_silence_and_clipping():
    sr = 48000
    tone = 0.25 * np.sin(2 * np.pi * 997 * np.arange(2 * sr) / sr)
    audio = np.stack([tone, tone]).astype(np.float32)
    audio[:, : sr // 2] = 0  # the first quarter is silent
    audio[0, -10:] = 1.0  # ten clipped samples
    facts = audio_facts(audio, sr)
    assert facts.duration_s == 2.0 and facts.silence_ratio == 0.25
    assert facts.clipped_fraction == 10 / audio.size and facts.peak_dbfs == 0.0
    # BS.1770: a sine peaking at 0 dBFS in both channels reads 0 LUFS; the silent blocks are gated out
    assert facts.lufs == pytest.approx(-12.0, abs=0.6)
    short = audio_facts(audio[:, : sr // 10], sr)
    assert short.lufs is None and short.silence_ratio == 1.0


def test_mean_ci_uses_student_t():
    ci = mean_ci([1.0, 2.0, 3.0, None])
    assert (ci.n, ci.mean, ci.std) == (3, 2.0, 1.0)
    assert ci.ci95_high - ci.mean == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert mean_ci([4.0]).ci95_low is None and mean_ci([]).mean is None


def test_missing_extra_is_named_with_the_install_command(render, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "pypinyin" else real(name))
    with pytest.raises(LevoError, match=r"^evaluate needs pypinyin; install the extra: pip install 'levo-batch\[eval\]'$"):
        evaluate(EvalOptions(render[0], asr_model=None, aesthetics=False))
