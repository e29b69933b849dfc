"""Issue 10, item 11: progress redirected to a file is plain timestamped lines with a moving ETA; start-up is
timed; the summary names the outputs and the failed songs."""

from __future__ import annotations

import re

from fakes import FakeDecoder, FakeStages
from levo_batch.pipeline import run
from test_pipeline import jobs_file, options  # noqa: F401 (fixture)

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")


def test_log_file_progress_has_no_escape_codes_and_counts_steps(jobs_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LEVO_PROGRESS_EVERY", "0")
    stages = FakeStages(decoder_obj=FakeDecoder(fail={"c"}))
    summary = run(options(jobs_file, tmp_path), stages)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err
    lines = err.splitlines()
    assert all(STAMP.match(line) for line in lines), [line for line in lines if not STAMP.match(line)][:3]
    text = [STAMP.sub("", line) for line in lines]
    assert text[0] == "3 songs in " + str(jobs_file) + ": 3 to render, 0 already done"
    assert "loading the LM ..." in text and any(re.fullmatch(r"loading the LM: \d+\.\d s", t) for t in text)
    first_done = next(i for i, t in enumerate(text) if t.startswith("LM: a done"))
    partial = [t for t in text[:first_done] if t.startswith("LM: 0.")]
    assert partial and re.search(r"LM: 0\.\d/3 songs \(\d+ %\), elapsed 0:00:\d\d, ETA 0:00:\d\d; 1 in flight",
                                 partial[-1])
    assert "decoding: a written, 1/3 songs" in text
    report = summary.report()
    assert "failed c: decoding failed: cannot decode c" in report
    assert f"outputs: {tmp_path / 'out' / 'audios'}, {tmp_path / 'out' / 'jsonl' / 'lyrics.jsonl.jsonl'}" in report
