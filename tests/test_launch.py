"""`--gpus`: GPU selection (fake devices, a fake nvidia-smi), worker command lines, and the supervisor's combined
view, failure propagation and signal forwarding, with real `levo-batch` workers where they stay fast on a CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from levo_batch.launch import GpuError, Supervisor, Worker, select_gpus, worker_argv
from levo_batch.shards import Shard
from test_cli import messages, tiny  # noqa: F401  (fixture)

LYRIC = "[intro-short] ; [verse] Hello there.Small song ; [outro-short]"


def test_listed_gpus_are_used_as_given_or_within_an_inherited_cuda_visible_devices():
    assert select_gpus("0,1,2", {}) == ["0", "1", "2"]
    assert select_gpus("1, 0", {"CUDA_VISIBLE_DEVICES": "4,6"}) == ["6", "4"]
    assert select_gpus("GPU-ab12,MIG-cd34", {}) == ["GPU-ab12", "MIG-cd34"]
    assert select_gpus("all", {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    with pytest.raises(GpuError, match="only 2 GPUs are visible"):
        select_gpus("0,2", {"CUDA_VISIBLE_DEVICES": "4,6"})
    with pytest.raises(GpuError, match="listed twice"):
        select_gpus("0,0", {})
    with pytest.raises(GpuError, match="expected all or a comma-separated list"):
        select_gpus(",", {})
    with pytest.raises(GpuError, match="no GPU found"):
        select_gpus("all", {"CUDA_VISIBLE_DEVICES": ""})


def test_all_counts_the_gpus_nvidia_smi_lists(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i})'\n" for i in range(3)))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert select_gpus("all", {}) == ["0", "1", "2"]
    smi.write_text("#!/bin/sh\necho 'No devices were found'\n")
    with pytest.raises(GpuError, match="--gpus all: no GPU found"):
        select_gpus("all", {})  # and torch (a CPU build here) sees none either


def test_worker_command_is_ours_with_its_own_shard():
    argv = ["generate", "ck", "in.jsonl", "out", "--gpus", "all", "--bgm", "--shard=1/2", "--shards", "4", "--seed", "3"]
    assert worker_argv(argv, Shard(2, 8)) == ["generate", "ck", "in.jsonl", "out", "--bgm", "--seed", "3",
                                              "--shard", "2/8"]


@pytest.fixture
def album(tmp_path) -> Path:
    path = tmp_path / "album.jsonl"
    path.write_text("".join(json.dumps({"idx": f"s{i}", "gt_lyric": LYRIC}) + "\n" for i in range(5)))
    return path


def levo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "levo_batch", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def test_one_worker_per_listed_gpu_each_seeing_only_its_gpu(tiny, album, tmp_path):
    ckpt, _, runtime = tiny
    done = levo("generate", str(ckpt), str(album), str(tmp_path / "out"), "--gpus", "0,1,2", "--dry-run",
                "--runtime-dir", str(runtime), env={"CUDA_VISIBLE_DEVICES": "5,6,7"})
    assert done.returncode == 0, done.stderr
    err = "\n".join(messages(done.stderr))
    assert "3 workers: gpu 5 shard 0/3 (2 songs), gpu 6 shard 1/3 (2 songs), gpu 7 shard 2/3 (1 songs)" in err
    for k, gpu in enumerate("567"):
        assert f"[gpu {gpu}] shard {k}/3 (from --shard), CUDA_VISIBLE_DEVICES={gpu}" in err
        planned = [line.split()[2].rstrip(":") for line in err.splitlines() if line.startswith(f"[gpu {gpu}] s")
                   and "new: LM" in line]
        assert planned == [f"s{i}" for i in range(k, 5, 3)]
        assert f"gpu {gpu}, shard {k}/3: ok" in err


def test_launcher_splits_the_shard_a_slurm_array_task_was_given(tiny, album, tmp_path):
    ckpt, _, runtime = tiny
    slurm = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    done = levo("generate", str(ckpt), str(album), str(tmp_path / "out"), "--gpus", "0,1", "--dry-run",
                "--runtime-dir", str(runtime), env=slurm)
    assert done.returncode == 0, done.stderr
    err = "\n".join(messages(done.stderr))
    assert ("2 workers of shard 1/2 (from SLURM_ARRAY_TASK_ID=1, SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_COUNT=2): "
            "gpu 0 shard 1/4 (1 songs), gpu 1 shard 3/4 (1 songs)") in err
    assert "[gpu 0] s1: new: LM" in err and "[gpu 1] s3: new: LM" in err


def test_a_failing_worker_makes_the_launcher_fail_and_the_others_finish(album, tmp_path):
    # --decode-only with no tokens: every worker with songs refuses up front (exit 2); the one without succeeds
    done = levo("generate", "ck", str(album), str(tmp_path / "out"), "--gpus", "0,1,2,3,4,5", "--decode-only")
    assert done.returncode == 2, done.stderr
    err = done.stderr
    for gpu in range(5):
        assert f"gpu {gpu}, shard {gpu}/6: FAILED (exit 2)" in err
    assert "gpu 5, shard 5/6: ok; done 0, skipped 0, failed 0" in err
    assert "5 of 6 workers failed (gpu 0, gpu 1, gpu 2, gpu 3, gpu 4)" in err


def test_bad_input_is_reported_once_before_any_worker_starts(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"idx": "a"}\n')
    done = levo("generate", "ck", str(bad), str(tmp_path / "out"), "--gpus", "0,1")
    assert done.returncode == 2
    assert done.stderr.count("bad.jsonl:1: gt_lyric: missing") == 1 and "[gpu" not in done.stderr
    assert not (tmp_path / "out").exists()
    nested = levo("generate", "ck", str(bad), str(tmp_path / "out"), "--gpus", "0",
                  env={"LEVO_BATCH_GPU_WORKER": "1"})
    assert nested.returncode == 2 and "--gpus inside a --gpus worker" in nested.stderr


WORKER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    flags = Path(sys.argv[1])
    got = []
    signal.signal(signal.SIGINT, lambda *a: got.append(1))
    print(f"worker sees CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", flush=True)
    (flags / os.environ["CUDA_VISIBLE_DEVICES"]).write_text("ready")
    while not got:
        time.sleep(0.02)
    time.sleep(0.5)  # a second (forwarded) signal would arrive now
    (flags / f"signals-{os.environ['CUDA_VISIBLE_DEVICES']}").write_text(str(len(got)))
    print("interrupted: resume with the same command", flush=True)
    sys.exit(130)
""")


def test_sigint_is_forwarded_once_to_every_worker_and_the_launcher_exits_130(tmp_path, capsys):
    workers = [Worker(str(g), Shard(g, 3), [sys.executable, "-c", WORKER, str(tmp_path)], []) for g in range(3)]

    def interrupt_when_ready():
        deadline = time.monotonic() + 120
        while not all((tmp_path / str(g)).exists() for g in range(3)) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    code = Supervisor(workers, tmp_path / "out", ("main",), False).run()
    assert code == 130
    assert [(tmp_path / f"signals-{g}").read_text() for g in range(3)] == ["1", "1", "1"]
    err = capsys.readouterr().err
    for g in range(3):
        assert f"[gpu {g}] worker sees CUDA_VISIBLE_DEVICES={g}" in err
        assert f"gpu {g}, shard {g}/3: FAILED (exit 130)" in err
    assert "resume with the same command" in err.splitlines()[-1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_combined_view_counts_the_songs_workers_finish(tmp_path, capsys):
    out = tmp_path / "out"
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        for idx in sys.argv[2:]:
            time.sleep(0.3)
            path = Path(sys.argv[1]) / "audios" / f"{idx}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        print(f"done {len(sys.argv) - 2}, skipped 0, failed 0", flush=True)
    """)
    songs = [["a", "c"], ["b"]]
    workers = [Worker(str(g), Shard(g, 2), [sys.executable, "-c", script, str(out), *s], s)
               for g, s in enumerate(songs)]
    assert Supervisor(workers, out, ("main",), False).run() == 0
    err = capsys.readouterr().err
    assert "album: 3.0/3 songs (100 %)" in err and "LM 0/3 | gpu 0: 2/2 gpu 1: 1/1" in err
    assert "gpu 0, shard 0/2: ok; done 2, skipped 0, failed 0" in err
    assert [sorted(w.finished) for w in workers] == songs
