"""Issue 10, items 2 and 5: finished songs record what made their audio; re-runs never keep stale audio."""

from __future__ import annotations

import json
import logging

import pytest

from fakes import FakeDecoder, FakeStages
from levo_batch.pipeline import run
from levo_batch.provenance import StaleOutputError, record_path
from test_pipeline import LYRIC, jobs_file, options, write_jobs  # noqa: F401 (fixture)


def output_items(tmp_path) -> dict[str, dict]:
    lines = (tmp_path / "out" / "jsonl" / "lyrics.jsonl.jsonl").read_text(encoding="utf-8").splitlines()
    return {item["idx"]: item for item in map(json.loads, lines)}


def audio_bytes(tmp_path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((tmp_path / "out" / "audios").glob("*.flac"))}


def test_changed_settings_re_render_every_song_and_say_why(jobs_file, tmp_path, caplog):
    run(options(jobs_file, tmp_path), FakeStages())
    before = audio_bytes(tmp_path)
    with caplog.at_level(logging.INFO):
        summary = run(options(jobs_file, tmp_path, seed=7), FakeStages())
    assert sorted(summary.done) == ["a", "b", "c"] and summary.skipped == []
    assert all(before[name] != data for name, data in audio_bytes(tmp_path).items())
    changed = FakeStages(settings={"temperature": 1.2})
    summary = run(options(jobs_file, tmp_path, seed=7), changed)
    assert sorted(summary.done) == ["a", "b", "c"]
    again = FakeStages(settings={"temperature": 1.2})
    assert sorted(run(options(jobs_file, tmp_path, seed=7), again).skipped) == ["a", "b", "c"]
    assert again.built == []


def test_edited_lyric_re_renders_only_that_song_and_the_jsonl_follows(jobs_file, tmp_path, capsys):
    run(options(jobs_file, tmp_path), FakeStages())
    items = [json.loads(line) for line in jobs_file.read_text().splitlines()]
    items[1]["gt_lyric"] = LYRIC.replace("Hello there", "Goodbye now")
    write_jobs(jobs_file, items)
    stages = FakeStages()
    summary = run(options(jobs_file, tmp_path), stages)
    assert summary.done == ["b"] and sorted(summary.skipped) == ["a", "c"]
    assert "re-rendering b: changed: song.lyrics:" in capsys.readouterr().err
    assert output_items(tmp_path)["b"]["gt_lyric"] == items[1]["gt_lyric"]


def test_strict_refuses_before_doing_anything(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path), FakeStages())
    before = audio_bytes(tmp_path)
    stages = FakeStages()
    with pytest.raises(StaleOutputError, match=r"--strict: 3 finished song\(s\).*a: changed: song.seed"):
        run(options(jobs_file, tmp_path, seed=3, strict=True), stages)
    assert stages.built == [] and audio_bytes(tmp_path) == before


def test_replaced_or_unrecorded_audio_is_re_rendered(jobs_file, tmp_path, capsys):
    run(options(jobs_file, tmp_path), FakeStages())
    capsys.readouterr()
    out = tmp_path / "out"
    original = (out / "audios" / "a.flac").read_bytes()
    (out / "audios" / "a.flac").write_bytes((out / "audios" / "b.flac").read_bytes())
    record_path(out, "c").unlink()
    summary = run(options(jobs_file, tmp_path), FakeStages())
    err = capsys.readouterr().err
    assert sorted(summary.done) == ["a", "c"] and summary.skipped == ["b"]
    assert "re-rendering a: " in err and "not the file that was rendered" in err
    assert "re-rendering c: its audio has no provenance record" in err
    assert (out / "audios" / "a.flac").read_bytes() == original


def test_corrupt_token_record_beside_audio_is_set_aside_and_regenerated(jobs_file, tmp_path, capsys, caplog):
    """Item 5: the song used to be skipped, the file kept, and its prompt facts lost from the jsonl."""
    run(options(jobs_file, tmp_path), FakeStages())
    capsys.readouterr()
    facts = output_items(tmp_path)["b"]["auto_prompt"]
    tokens = tmp_path / "out" / "tokens" / "b.npz"
    tokens.write_bytes(b"\0garbage")
    stages = FakeStages()
    summary = run(options(jobs_file, tmp_path), stages)
    err = capsys.readouterr().err
    assert summary.done == ["b"] and stages.generator_obj.calls == [["b"]]
    assert "re-rendering b: its token record" in err and "moved aside to b.npz.corrupt" in caplog.text
    assert tokens.with_name("b.npz.corrupt").read_bytes() == b"\0garbage" and tokens.exists()
    assert output_items(tmp_path)["b"]["auto_prompt"] == facts


def test_corrupt_provenance_record_is_set_aside_and_the_song_re_rendered(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path), FakeStages())
    record_path(tmp_path / "out", "a").write_text("{not json")
    summary = run(options(jobs_file, tmp_path), FakeStages())
    assert summary.done == ["a"]
    assert record_path(tmp_path / "out", "a").with_name("a.json.corrupt").exists()
    assert "a" in output_items(tmp_path)


def test_jsonl_describes_the_audio_on_disk_when_a_re_render_fails(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path), FakeStages())
    items = [json.loads(line) for line in jobs_file.read_text().splitlines()]
    old_lyric = items[0]["gt_lyric"]
    items[0]["gt_lyric"] = LYRIC.replace("Sing it loud", "Whisper")
    write_jobs(jobs_file, items)
    summary = run(options(jobs_file, tmp_path), FakeStages(decoder_obj=FakeDecoder(fail={"a"})))
    assert list(summary.failed) == ["a"]
    assert output_items(tmp_path)["a"]["gt_lyric"] == old_lyric  # the old audio is still what is on disk


def test_tokens_only_then_decode_only_then_a_full_run_keeps_everything(jobs_file, tmp_path):
    run(options(jobs_file, tmp_path, tokens_only=True), FakeStages())
    assert sorted(run(options(jobs_file, tmp_path, decode_only=True), FakeStages()).done) == ["a", "b", "c"]
    assert sorted(run(options(jobs_file, tmp_path, decode_only=True), FakeStages()).skipped) == ["a", "b", "c"]
    full = FakeStages()
    assert sorted(run(options(jobs_file, tmp_path), full).skipped) == ["a", "b", "c"] and full.built == []


def test_decode_only_re_decodes_when_the_stored_tokens_changed(jobs_file, tmp_path, capsys):
    run(options(jobs_file, tmp_path), FakeStages())
    run(options(jobs_file, tmp_path, seed=9, tokens_only=True), FakeStages())
    capsys.readouterr()
    summary = run(options(jobs_file, tmp_path, seed=9, decode_only=True), FakeStages())
    assert sorted(summary.done) == ["a", "b", "c"]
    assert "re-rendering a: its stored tokens differ from the ones its audio was decoded from" in \
        capsys.readouterr().err
