"""The pipeline spine with deterministic stage doubles: phases, outputs, skip/overwrite, resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
import soundfile as sf

from fakes import FakeDecoder, FakeGenerator, FakePrompts, FakeStages
from levo_batch.interrupt import StopRequested, interruptible
from levo_batch.jobs import JobsError
from levo_batch.lock import RunLock, LockHeldError
from levo_batch.pipeline import RunOptions, run
from levo_batch.preflight import PreflightError
from levo_batch.store import TokenStore

LYRIC = "[intro-short] ; [verse] Hello there.Small song ; [chorus] Sing it loud ; [outro-short]"


def write_jobs(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(0).normal(0, 0.1, (48000, 2)).astype(np.float32), 48000)
    return write_jobs(tmp_path / "lyrics.jsonl", [
        {"idx": "a", "gt_lyric": LYRIC, "descriptions": "Female, Pop", "mood": "sunny"},
        {"idx": "b", "gt_lyric": LYRIC, "auto_prompt_audio_type": "Jazz"},
        {"idx": "c", "gt_lyric": LYRIC, "prompt_audio_path": "clip.wav"},
    ])


def options(jobs_file: Path, tmp_path: Path, **kw) -> RunOptions:
    return RunOptions(jobs_file, tmp_path / "out", save_dir_text="out", **kw)


def tokens_of(save_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((save_dir / "tokens").glob("*.npz")):
        if not path.name.endswith(".partial.npz"):
            with np.load(path) as npz:
                out[path.stem] = npz["tokens"].astype(np.int64)
    return out


def test_full_run_writes_upstream_layout(jobs_file, tmp_path):
    stages = FakeStages()
    summary = run(options(jobs_file, tmp_path), stages)
    out = tmp_path / "out"
    assert summary.exit_code == 0 and sorted(summary.done) == ["a", "b", "c"]
    for idx in "abc":
        audio, sr = sf.read(out / "audios" / f"{idx}.flac")
        assert sr == 48000 and audio.shape[1] == 2
        assert audio.shape[0] == tokens_of(out)[idx].shape[1] * 1920
    lines = (out / "jsonl" / "lyrics.jsonl.jsonl").read_text(encoding="utf-8").splitlines()
    items = [json.loads(line) for line in lines]
    assert [i["idx"] for i in items] == ["a", "b", "c"]
    assert items[0] == {"idx": "a", "gt_lyric": LYRIC, "descriptions": "Female, Pop", "mood": "sunny",
                        "wav_path": "out/audios/a.flac"}
    assert items[1]["auto_prompt"]["genre"] == "Jazz"
    assert stages.built.count("generator") == 1 and stages.built.count("decoder") == 1
    assert stages.prompts_obj.released
    assert len(stages.decoder_obj.calls) == 1 and len(stages.decoder_obj.calls[0]) == 3
    assert summary.audio_seconds == pytest.approx(sum(t.shape[1] for t in tokens_of(out).values()) / 25)
    assert not (out / ".levo_batch.lock").exists()


def test_separate_writes_three_stems(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path, gen_type="separate"), FakeStages())
    names = sorted(p.name for p in (tmp_path / "out" / "audios").iterdir())
    assert names == sorted(f"{i}{s}.flac" for i in "abc" for s in ("", "_vocal", "_bgm"))


def test_rerun_skips_finished_songs_and_overwrite_redoes_them(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path), FakeStages())
    again = FakeStages()
    summary = run(options(jobs_file, tmp_path), again)
    assert sorted(summary.skipped) == ["a", "b", "c"] and summary.done == []
    assert again.built == []
    redo = FakeStages()
    summary = run(options(jobs_file, tmp_path, overwrite=True), redo)
    assert sorted(summary.done) == ["a", "b", "c"] and redo.generator_obj.calls == [["a", "b", "c"]]


def test_tokens_only_then_decode_only(jobs_file, tmp_path):
    first = FakeStages()
    summary = run(options(jobs_file, tmp_path, tokens_only=True), first)
    assert "decoder" not in first.built and not (tmp_path / "out" / "audios").exists()
    assert sorted(summary.done) == ["a", "b", "c"] and "tokens only, no audio" in summary.report()
    assert sorted(tokens_of(tmp_path / "out")) == ["a", "b", "c"]
    second = FakeStages()
    summary = run(options(jobs_file, tmp_path, decode_only=True), second)
    assert "generator" not in second.built and sorted(summary.done) == ["a", "b", "c"]


def test_interrupted_run_resumes_mid_song_with_identical_tokens(jobs_file, tmp_path):
    reference = tmp_path / "ref"
    run(RunOptions(jobs_file, reference, tokens_only=True), FakeStages())
    stopping = FakeStages(generator_obj=FakeGenerator(stop_after_steps=33))
    with pytest.raises(StopRequested), interruptible():
        run(options(jobs_file, tmp_path, tokens_only=True), stopping)
    partials = list((tmp_path / "out" / "tokens").glob("*.partial.npz"))
    assert len(partials) == 1
    resumed = FakeStages()
    run(options(jobs_file, tmp_path, tokens_only=True), resumed)
    assert resumed.generator_obj.resumed_from  # the half-done song continued from its checkpoint
    ref, got = tokens_of(reference), tokens_of(tmp_path / "out")
    assert ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)
    assert not list((tmp_path / "out" / "tokens").glob("*.partial.npz"))


def test_changed_settings_regenerate_stale_records(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path, tokens_only=True), FakeStages())
    changed = FakeStages()
    run(options(jobs_file, tmp_path, tokens_only=True, seed=7), changed)
    assert changed.generator_obj.calls == [["a", "b", "c"]]
    same = FakeStages()
    run(options(jobs_file, tmp_path, tokens_only=True, seed=7), same)
    assert same.generator_obj.calls == []


def test_strict_refuses_stale_records(jobs_file, tmp_path):
    from levo_batch.store import StaleRecordError

    run(options(jobs_file, tmp_path, tokens_only=True), FakeStages())
    with pytest.raises(StaleRecordError, match="--overwrite"):
        run(options(jobs_file, tmp_path, tokens_only=True, seed=3, strict=True), FakeStages())


def test_failed_songs_are_reported_and_the_rest_continue(jobs_file, tmp_path):
    stages = FakeStages(prompts_obj=FakePrompts(fail={"c"}), decoder_obj=FakeDecoder(fail={"a"}))
    summary = run(options(jobs_file, tmp_path), stages)
    assert summary.done == ["b"] and summary.exit_code == 1
    assert "silent" in summary.failed["c"] and "cannot decode a" in summary.failed["a"]
    items = (tmp_path / "out" / "jsonl" / "lyrics.jsonl.jsonl").read_text().splitlines()
    assert [json.loads(i)["idx"] for i in items] == ["b"]
    assert "failed 1" not in summary.report() and "failed 2" in summary.report()


def test_invalid_input_writes_nothing(tmp_path):
    bad = write_jobs(tmp_path / "bad.jsonl", [{"idx": "x/../y", "gt_lyric": LYRIC}])
    stages = FakeStages()
    with pytest.raises(JobsError, match=r"bad.jsonl:1: idx"):
        run(RunOptions(bad, tmp_path / "out"), stages)
    assert not (tmp_path / "out").exists() and stages.built == []


def test_dry_run_prints_plan_and_writes_nothing(jobs_file, tmp_path, capsys):
    stages = FakeStages()
    run(options(jobs_file, tmp_path, dry_run=True), stages)
    out = capsys.readouterr().out
    assert "a: new: LM, then decode [no prompt]" in out and "[auto prompt Jazz]" in out
    assert not (tmp_path / "out").exists() and stages.built == []


def test_second_run_on_same_save_dir_is_refused(jobs_file, tmp_path):
    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out"):
        with pytest.raises(LockHeldError, match=str(__import__("os").getpid())):
            run(options(jobs_file, tmp_path), FakeStages())


def test_song_tokens_do_not_depend_on_the_rest_of_the_file(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path, tokens_only=True), FakeStages())
    alone = write_jobs(tmp_path / "alone.jsonl", [orjson.loads(jobs_file.read_text().splitlines()[1])])
    run(RunOptions(alone, tmp_path / "alone", tokens_only=True), FakeStages())
    assert np.array_equal(tokens_of(tmp_path / "alone")["b"], tokens_of(tmp_path / "out")["b"])
    assert TokenStore(tmp_path / "alone").load_any("b").meta["prompt"] == \
        TokenStore(tmp_path / "out").load_any("b").meta["prompt"]


def test_dry_run_plan_follows_files_and_flags(jobs_file, tmp_path, capsys):
    run(options(jobs_file, tmp_path, tokens_only=True), FakeStages())
    (tmp_path / "out" / "tokens" / "c.npz").rename(tmp_path / "out" / "tokens" / "c.partial.npz")
    capsys.readouterr()
    run(options(jobs_file, tmp_path, dry_run=True), FakeStages())
    out = capsys.readouterr().out
    assert "a: tokens present (checked against the model at run time), then decode" in out
    assert "c: partial tokens: resume LM mid-song, then decode" in out
    with pytest.raises(PreflightError, match=r"--decode-only: no finished tokens in .* for 1 song\(s\): c;"):
        run(options(jobs_file, tmp_path, dry_run=True, decode_only=True), FakeStages())
    (tmp_path / "out" / "tokens" / "c.partial.npz").rename(tmp_path / "out" / "tokens" / "c.npz")
    run(options(jobs_file, tmp_path, dry_run=True, decode_only=True), FakeStages())
    assert "a: decode stored tokens" in capsys.readouterr().out
    run(options(jobs_file, tmp_path, dry_run=True, overwrite=True, tokens_only=True), FakeStages())
    assert "b: redo: LM [auto prompt Jazz]" in capsys.readouterr().out
