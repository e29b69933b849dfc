"""Shards: K/N parsing, the Slurm and Kubernetes environments, song selection, and the per-shard lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from levo_batch.cli import main
from levo_batch.lock import LOCK_NAME, LockHeldError
from levo_batch.shards import WHOLE, Shard, ShardError, live_shards, parse_shard, resolve_shard, shard_lock
from test_cli import messages, tiny  # noqa: F401  (fixture)


def test_shard_owns_positions_congruent_to_k_mod_n_and_shards_cover_the_file_once():
    songs = [f"s{i}" for i in range(10)]
    assert Shard(1, 3).select(songs) == ["s1", "s4", "s7"]
    parts = [Shard(k, 3).select(songs) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(songs)
    assert WHOLE.select(songs) == songs


def test_split_cuts_a_shard_into_disjoint_worker_shards():
    songs = list(range(40))
    outer = Shard(1, 4)
    workers = outer.split(3)
    assert [w.label for w in workers] == ["1/12", "5/12", "9/12"]
    assert sorted(sum((w.select(songs) for w in workers), [])) == outer.select(songs)
    assert [w.label for w in WHOLE.split(2)] == ["0/2", "1/2"]


@pytest.mark.parametrize("a, b, shared", [("0/2", "1/2", False), ("0/2", "2/4", True), ("0/2", "1/4", False),
                                          ("1/3", "0/2", True), ("0/1", "5/7", True)])
def test_overlap_of_two_shardings_is_their_shared_positions(a, b, shared):
    x, y = parse_shard(a), parse_shard(b)
    assert x.overlaps(y) == shared == y.overlaps(x)
    positions = range(200)
    assert bool(set(x.select(positions)) & set(y.select(positions))) == shared


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shard_flag_is_a_clear_error(text):
    with pytest.raises(ShardError, match="--shard"):
        parse_shard(text)


SLURM = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "8"}


def test_slurm_array_task_maps_to_its_offset_in_the_array():
    shard = resolve_shard(None, None, SLURM)
    assert (shard.index, shard.count) == (2, 8)
    assert "SLURM_ARRAY_TASK_ID=5" in shard.source and "SLURM_ARRAY_TASK_COUNT=8" in shard.source
    stepped = dict(SLURM, SLURM_ARRAY_TASK_ID="7", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_STEP="2")
    assert resolve_shard(None, None, stepped).label == "3/8"


@pytest.mark.parametrize("env, message", [
    (dict(SLURM, SLURM_ARRAY_TASK_ID="11"), "not one of 8 evenly spaced tasks"),
    (dict(SLURM, SLURM_ARRAY_TASK_STEP="2", SLURM_ARRAY_TASK_ID="6"), "not one of 8"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_MIN is not set"),
    (dict(SLURM, SLURM_ARRAY_TASK_COUNT="x"), "is not a number"),
])
def test_slurm_arrays_that_do_not_map_to_shards_are_refused(env, message):
    with pytest.raises(ShardError, match=message):
        resolve_shard(None, None, env)


def test_kubernetes_indexed_job_takes_the_count_from_shards():
    shard = resolve_shard(None, 4, {"JOB_COMPLETION_INDEX": "3"})
    assert shard.label == "3/4" and shard.source == "JOB_COMPLETION_INDEX=3, --shards 4"
    with pytest.raises(ShardError, match="pass --shards N with N = the Job's completions"):
        resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "3"})
    with pytest.raises(ShardError, match="need 0 <= K < N"):
        resolve_shard(None, 3, {"JOB_COMPLETION_INDEX": "3"})


def test_flag_beats_the_environment_and_nothing_means_the_whole_file():
    shard = resolve_shard("1/2", None, SLURM)
    assert shard.label == "1/2" and shard.source == "--shard"
    assert resolve_shard(None, None, {}) == WHOLE
    with pytest.raises(ShardError, match="--shards N needs JOB_COMPLETION_INDEX"):
        resolve_shard(None, 2, {})


def test_cli_first_line_names_the_shard_and_its_source(tiny, tmp_path, capsys, monkeypatch):
    ckpt, _, runtime = tiny
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    jobs = tmp_path / "in.jsonl"
    jobs.write_text("".join(f'{{"idx": "s{i}", "gt_lyric": "[verse] La la ; [outro-short]"}}\n' for i in range(5)))
    assert main(["generate", str(ckpt), str(jobs), str(tmp_path / "out"), "--shards", "2", "--dry-run",
                 "--runtime-dir", str(runtime)]) == 0
    captured = capsys.readouterr()
    assert messages(captured.err)[0] == "shard 1/2 (from JOB_COMPLETION_INDEX=1, --shards 2)"
    assert "shard 1/2: 2 of 5 songs" in captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines()[:-1]] == ["s1", "s3"]
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    assert main(["generate", "ck", str(jobs), str(tmp_path / "out"), "--shard", "2/2", "--dry-run"]) == 2
    assert "error: shard 2/2 (--shard): need 0 <= K < N" in capsys.readouterr().err


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from levo_batch.shards import parse_shard, shard_lock
    with shard_lock(Path(sys.argv[1]), parse_shard(sys.argv[2])):
        print("acquired", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding shard 0/2 of tmp_path."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "0/2"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "acquired"
    yield proc
    proc.kill()
    proc.wait()


def test_same_shard_twice_is_refused_and_other_shards_run_side_by_side(tmp_path, holder):
    with pytest.raises(LockHeldError, match=rf"shard 0/2 of SAVE_DIR {tmp_path} is in use by another levo_batch "
                                            rf"run \(PID {holder.pid} on host"):
        with shard_lock(tmp_path, Shard(0, 2)):
            pass
    with shard_lock(tmp_path, Shard(1, 2)):
        assert sorted(s.label for s, _ in live_shards(tmp_path)) == ["0/2", "1/2"]
    assert [s.label for s, _ in live_shards(tmp_path)] == ["0/2"]


@pytest.mark.parametrize("other", ["0/1", "2/4", "0/3"])
def test_another_sharding_sharing_songs_with_a_live_shard_is_refused(tmp_path, holder, other):
    with pytest.raises(LockHeldError, match=r"in use by a run of shard 0/2 .*shares songs with"):
        with shard_lock(tmp_path, parse_shard(other)):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".levo_batch.shard-0-of-2.lock"]


def test_disjoint_sharding_of_another_count_may_run(tmp_path, holder):
    with shard_lock(tmp_path, Shard(1, 4)):  # odd positions: none of shard 0/2's
        pass


def test_dead_shard_lock_is_taken_over_and_not_counted_as_live(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1/3"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "acquired"
    proc.kill()
    proc.wait()
    assert (tmp_path / ".levo_batch.shard-1-of-3.lock").exists() and live_shards(tmp_path) == []
    with shard_lock(tmp_path, WHOLE) as lock:
        assert lock.path.name == LOCK_NAME
    with shard_lock(tmp_path, Shard(1, 3)):
        pass
