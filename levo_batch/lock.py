"""One run per SAVE_DIR.

Two runs writing the same token store would race on the same checkpoints and audio files, so a run holds
`SAVE_DIR/.levo_batch.lock` for its whole life. The file is created with `O_CREAT | O_EXCL` (only one
creator can win) and is also `flock`ed where the platform has it: the kernel drops an flock when its holder
dies, even by `kill -9`, which is what lets a later run tell a dead holder from a live one without trusting
PIDs alone (they get reused). The JSON payload (PID, host, start time) is there for the error message and for
platforms without flock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from .errors import LevoError

try:
    import fcntl
except ImportError:  # Windows: O_EXCL plus the PID check still keep concurrent runs apart.
    fcntl = None

LOCK_NAME = ".levo_batch.lock"
_SETTLE_S = 2.0
"""How long a lock may look half-made (empty file, or a dead holder's file being taken over) before we judge it."""

log = logging.getLogger(__name__)


class LockHeldError(LevoError, RuntimeError):
    """Another run (alive, or not provably dead) holds the SAVE_DIR."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (a PID we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_flock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        holder = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _provably_dead(holder: dict | None) -> bool:
    """Only a holder on this host can be checked; one elsewhere is presumed alive."""
    return holder is not None and holder.get("host") == socket.gethostname() and not pid_alive(holder["pid"])


class RunLock:
    """Context manager holding `SAVE_DIR/.levo_batch.lock`; raises `LockHeldError` if another run has it."""

    def __init__(self, save_dir: str | Path, name: str = LOCK_NAME, what: str | None = None):
        self.save_dir = Path(save_dir)
        self.path = self.save_dir / name
        self.what = what or f"SAVE_DIR {self.save_dir}"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.save_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _SETTLE_S
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                if not self._clear_if_stale(settled=time.monotonic() > deadline):
                    time.sleep(0.05)
                continue
            try:
                self._claim(fd)
            except BaseException:  # e.g. a full disk: leave no empty lock file behind
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file (only if it is still ours), then drop the flock."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        finally:
            os.close(self._fd)
            self._fd = None

    def _claim(self, fd: int) -> None:
        """Lock and fill a file we just created (blocking: a peer that is only inspecting it lets go at once)."""
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.write(fd, orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
        os.fsync(fd)
        self._fd = fd

    def _clear_if_stale(self, settled: bool) -> bool:
        """Remove an abandoned lock file. True: retry now; False: it is in flux, retry shortly; raises if held."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            if not _try_flock(fd):
                holder = _read_holder(fd)
                if settled or not _provably_dead(holder):
                    raise LockHeldError(self._held_message(holder))
                return False  # another run is taking this dead holder's lock over right now
            if not _same_file(fd, self.path):
                return True
            holder = _read_holder(fd)
            if holder is None:
                if time.time() - os.fstat(fd).st_mtime < _SETTLE_S:
                    return False  # its creator has not written it yet
                log.warning("Taking over %s: a run died before writing it.", self.path)
            elif not _provably_dead(holder):
                raise LockHeldError(self._held_message(holder))
            else:
                log.warning(
                    "Taking over stale lock %s: its run (PID %s, started %s) is no longer alive.",
                    self.path, holder["pid"], holder.get("started", "?"),
                )
            os.unlink(self.path)
            return True
        finally:
            os.close(fd)

    def _held_message(self, holder: dict | None) -> str:
        if holder is None:
            who = "one that is still starting"
        else:
            who = f"PID {holder['pid']} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            if holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
                who += ": this very process"
        return (
            f"{self.what} is in use by another levo_batch run ({who}). Wait for it to finish or "
            f"use another SAVE_DIR. If you are sure that run is gone (e.g. it ran on another host), delete "
            f"{self.path} and retry."
        )


def live_holder(path: Path) -> tuple[bool, dict | None]:
    """Whether the run named in lock file `path` is alive (it holds the flock), and its payload."""
    writable = True
    try:
        fd = os.open(path, os.O_RDWR)  # an exclusive lock on NFS needs a writable descriptor
    except FileNotFoundError:
        return False, None
    except PermissionError:  # another user's run: judge it by its payload alone
        writable = False
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False, None
    try:
        holder = _read_holder(fd)
        if fcntl is None or not writable:
            return holder is not None and not _provably_dead(holder), holder
        if _try_flock(fd):
            return False, holder
        return True, holder
    finally:
        os.close(fd)
