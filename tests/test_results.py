"""Shards sharing a SAVE_DIR (stage doubles): the output jsonl assembled by the last shard, `merge`, re-runs
with another shard count."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeStages
from levo_batch.cli import main
from levo_batch.pipeline import RunOptions, run
from levo_batch.shards import Shard

LYRIC = "[intro-short] ; [verse] Hello there.Small song ; [chorus] Sing it loud ; [outro-short]"
IDX = [f"song{i}" for i in range(7)]


@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    items = [{"idx": idx, "gt_lyric": LYRIC, "descriptions": "Pop"} for idx in IDX]
    items[2] = {"idx": IDX[2], "gt_lyric": LYRIC, "auto_prompt_audio_type": "Jazz", "extra": [1, 2]}
    path = tmp_path / "album.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def render(jobs_file: Path, out: Path, shard: Shard = Shard(), **kw):
    return run(RunOptions(jobs_file, out, save_dir_text=str(out), shard=shard, **kw), FakeStages())


def files(out: Path) -> dict[str, object]:
    """Flac bytes and token arrays (an npz's zip headers carry the clock, so not its bytes)."""
    found: dict[str, object] = {f"audios/{p.name}": p.read_bytes() for p in sorted((out / "audios").iterdir())}
    for path in sorted((out / "tokens").iterdir()):
        with np.load(path) as npz:
            found[f"tokens/{path.name}"] = npz["tokens"].tolist()
    return found


def final(out: Path) -> bytes:
    return (out / "jsonl" / "album.jsonl.jsonl").read_bytes()


@pytest.fixture
def whole(jobs_file, tmp_path) -> Path:
    out = tmp_path / "whole"
    assert render(jobs_file, out).exit_code == 0
    return out


def test_shards_one_after_another_equal_one_run_and_the_last_assembles(jobs_file, tmp_path, whole):
    out = tmp_path / "sharded"
    done = []
    for k in range(3):
        summary = render(jobs_file, out, Shard(k, 3))
        done += summary.done
        assert sorted(summary.done) == sorted(Shard(k, 3).select(IDX))
    assert sorted(done) == sorted(IDX)
    assert files(out) == files(whole)
    assert final(out) == final(whole).replace(str(whole).encode(), str(out).encode())
    assert sorted(p.name for p in (out / "jsonl").iterdir()) == ["album.jsonl.jsonl"]


def test_rerun_with_another_shard_count_skips_what_any_shard_rendered(jobs_file, tmp_path, whole):
    out = tmp_path / "out"
    render(jobs_file, out, Shard(0, 2))
    summary = render(jobs_file, out, Shard(1, 3))
    assert sorted(summary.skipped) == sorted(set(Shard(1, 3).select(IDX)) & set(Shard(0, 2).select(IDX)))
    for k in (0, 2):
        render(jobs_file, out, Shard(k, 3))
    assert files(out) == files(whole)
    assert final(out) == final(whole).replace(str(whole).encode(), str(out).encode())
    again = render(jobs_file, out)  # unsharded over the same SAVE_DIR: nothing left to do
    assert sorted(again.skipped) == sorted(IDX) and again.done == []
    assert final(out) == final(whole).replace(str(whole).encode(), str(out).encode())


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from levo_batch.shards import parse_shard, shard_lock
    with shard_lock(Path(sys.argv[1]), parse_shard(sys.argv[2])):
        print("acquired", flush=True)
        time.sleep(60)
""")


def test_a_shard_leaves_assembly_to_a_shard_still_running_and_merge_does_it_by_hand(jobs_file, tmp_path, whole,
                                                                                  capsys):
    out = tmp_path / "out"
    running = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "1/2"], stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout.readline().strip() == "acquired"
        render(jobs_file, out, Shard(0, 2))
        assert not (out / "jsonl" / "album.jsonl.jsonl").exists()  # the running shard will write it
        assert main(["merge", str(out), str(jobs_file)]) == 0
        err = capsys.readouterr().err
        assert "warning: shards still running (1/2)" in err and "4 of 7 songs finished" in err
        lines = final(out).decode().splitlines()
        assert [json.loads(line)["idx"] for line in lines] == Shard(0, 2).select(IDX)
    finally:
        running.kill()
        running.wait()
    render(jobs_file, out, Shard(1, 2))
    assert final(out) == final(whole).replace(str(whole).encode(), str(out).encode())


def test_merge_rebuilds_the_jsonl_from_the_files(jobs_file, tmp_path, whole, capsys):
    (whole / "jsonl" / "album.jsonl.jsonl").rename(tmp_path / "kept.jsonl")
    (whole / "audios" / f"{IDX[4]}.flac").unlink()
    assert main(["merge", str(whole), str(jobs_file)]) == 0
    assert "6 of 7 songs finished" in capsys.readouterr().err
    expected = [line for line in (tmp_path / "kept.jsonl").read_text().splitlines() if IDX[4] not in line]
    assert final(whole).decode().splitlines() == expected
    assert main(["merge", str(whole), str(jobs_file), "--separate"]) == 0  # no stems: nothing finished
    assert "0 of 7 songs finished; nothing written" in capsys.readouterr().err
