"""Atomic file writes: readers, crashes and kills only ever see a file's old or new complete content.

Every file levo_batch writes (token records, checkpoints, FLACs, provenance, jsonl, caches) goes through
`atomic_write`: a temp file in the same folder, fsync, rename, fsync of the folder. A run killed at any instant
leaves each file absent, as before, or complete. `sweep_temp_files` removes the temp files of writers that died.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import BinaryIO, Callable

from levo_batch.errors import StorageError
from levo_batch.lock import pid_alive

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.([0-9a-f]+)\.tmp$")
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
"""Temp names carry the writer's host: shards on other machines share SAVE_DIR, and their PIDs mean nothing here."""
_FOREIGN_TEMP_AGE_S = 3600.0
"""A temp file of another host untouched this long belongs to a writer that died (a write takes seconds)."""


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(f)` so readers (and crashes) only ever see the old or the new file.

    The temp file sits in the same directory (a rename is only atomic within one file system) and carries
    the writer's host and PID, so `sweep_temp_files` can tell an abandoned one from one being written. A full
    disk, a read-only file system or a permission problem raises `StorageError` (the run cannot go on).
    """
    path = Path(path)
    try:
        _atomic_write(path, write)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(storage_message(path, e)) from e
        raise


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def storage_message(path: Path, e: OSError) -> str:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a parent of it is not a folder"}
    reason = what.get(e.errno, "permission denied")
    return (f"cannot write {path}: {reason}. Everything finished so far is kept: fix this (free space, "
            f"permissions or another SAVE_DIR) and rerun the same command to resume.")


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_HOST_TAG}{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); platforms that cannot open directories skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep_temp_files(directory: Path) -> int:
    """Delete temp files left by writers that died mid-write; returns how many. Live writers' files stay.

    A writer on this host is judged by its PID; one on another host (a shard sharing SAVE_DIR over a network
    file system) only by the age of its file, so a shard never deletes another machine's write in flight.
    """
    removed = 0
    if not Path(directory).is_dir():
        return removed
    for entry in Path(directory).iterdir():
        m = _TEMP_RE.match(entry.name)
        if m is None:
            continue
        tail = m.group(2)
        if len(tail) == 16 and not tail.startswith(_HOST_TAG):
            try:
                abandoned = time.time() - entry.stat().st_mtime > _FOREIGN_TEMP_AGE_S
            except FileNotFoundError:
                continue
        else:
            abandoned = not pid_alive(int(m.group(1)))
        if abandoned:
            entry.unlink(missing_ok=True)
            removed += 1
    return removed
