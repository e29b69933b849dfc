import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from levo_batch.lock import LOCK_NAME, LockHeldError, RunLock

HOLD = textwrap.dedent(
    """
    import sys, time
    from levo_batch.lock import LockHeldError, RunLock
    try:
        with RunLock(sys.argv[1]):
            print("acquired", flush=True)
            time.sleep(float(sys.argv[2]))
    except LockHeldError as e:
        print("held:", e, flush=True)
        sys.exit(3)
    """
)


def run_holder(save_dir, hold_s=0.0, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(save_dir), str(hold_s)], stdout=subprocess.PIPE, text=True, **kw
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_file_names_holder_and_is_removed(tmp_path):
    with RunLock(tmp_path) as lock:
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert lock.path == tmp_path / LOCK_NAME
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        assert holder["started"].endswith("+00:00")
    assert not (tmp_path / LOCK_NAME).exists()


def test_released_on_exception(tmp_path):
    with pytest.raises(KeyError):
        with RunLock(tmp_path / "out"):
            raise KeyError("boom")
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    with RunLock(tmp_path / "out"):
        pass


def test_second_run_in_same_process_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(LockHeldError, match=rf"PID {os.getpid()} on host .*this very process"):
            with RunLock(tmp_path):
                pass
        assert (tmp_path / LOCK_NAME).exists()


def test_second_run_in_other_process_fails_naming_holder(tmp_path):
    with RunLock(tmp_path):
        out, _ = run_holder(tmp_path).communicate(timeout=60)
    assert out.startswith("held:")
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in out
    assert "another SAVE_DIR" in out and str(tmp_path / LOCK_NAME) in out


def test_child_holding_lock_blocks_parent(tmp_path):
    child = run_holder(tmp_path, hold_s=30)
    try:
        assert child.stdout.readline().strip() == "acquired"
        with pytest.raises(LockHeldError, match=f"PID {child.pid} "):
            RunLock(tmp_path).__enter__()
    finally:
        child.kill()
        child.wait()


def test_lock_of_killed_run_is_taken_over(tmp_path, caplog):
    child = run_holder(tmp_path, hold_s=30)
    assert child.stdout.readline().strip() == "acquired"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (tmp_path / LOCK_NAME).exists()
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"PID {child.pid}" in caplog.text and "no longer alive" in caplog.text


def test_stale_lock_from_dead_pid_is_taken_over(tmp_path, caplog):
    pid = dead_pid()
    stale = {"pid": pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and str(pid) in caplog.text


def test_lock_written_by_live_pid_is_respected(tmp_path):
    """Without an flock we still refuse when the recorded PID is alive on this host."""
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(live))
    with pytest.raises(LockHeldError, match=f"PID {os.getppid()} "):
        RunLock(tmp_path).__enter__()


def test_lock_from_other_host_is_not_guessed_dead(tmp_path):
    other = {"pid": dead_pid(), "host": "elsewhere.invalid", "started": "2020-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(LockHeldError, match="on host elsewhere.invalid"):
        RunLock(tmp_path).__enter__()


def test_old_empty_lock_is_taken_over(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_bytes(b"")
    os.utime(path, (time.time() - 60, time.time() - 60))
    with RunLock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_only_one_of_concurrent_runs_wins_and_ctrl_c_releases(tmp_path):
    procs = [run_holder(tmp_path, hold_s=60) for _ in range(3)]
    first_lines = [p.stdout.readline() for p in procs]
    winners = [p for p, line in zip(procs, first_lines) if line.startswith("acquired")]
    assert len(winners) == 1
    assert sum(line.startswith("held:") for line in first_lines) == 2
    winners[0].send_signal(signal.SIGINT)
    for p in procs:
        p.communicate(timeout=60)
    assert not (tmp_path / LOCK_NAME).exists()
