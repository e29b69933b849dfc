"""The token store: per-song LM results under `SAVE_DIR/tokens/`, resumable after any kind of interruption.

Layout, one song per `idx`:

- `{idx}.npz`: the finished `[3, T]` codes, the fingerprint of everything that produced them, and a small
  JSON `meta` (prompt facts, steps, wall time, the fingerprint's parts for error messages).
- `{idx}.partial.npz`: the LM's latest mid-song checkpoint (whatever arrays its sampler hands over) plus the
  fingerprint; deleted once the finished record is safely on disk.

Every file is written by `levo_batch.atomic.atomic_write` (temp file, fsync, rename, fsync of the directory),
so a run killed at any instant (kill -9, Ctrl-C, power cut after the fsync) leaves each file either absent, as
before, or complete; never half-written. Only a person editing a file can make it unreadable, and that is treated like
a stale record: warned about and regenerated.

Why resuming gives exactly the tokens of an uninterrupted run: the LM's sampler state is a pure function of
the pattern columns written so far, the step number and the per-song seed. Its random draws are
counter-based (a function of `(seed, step)`, not of a stream advanced by earlier draws) and the transformer
re-reads the written columns, so storing those columns and the step is enough to rebuild the state bit for
bit; nothing depends on batch mates, timing, or how many times the song was interrupted. The fingerprint
ties a checkpoint to the model, sampling parameters, seed, inputs and prompt that produced it, so a run with
any of those changed never continues (or reuses) it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import orjson

from levo_batch.atomic import atomic_write, sweep_temp_files
from levo_batch.errors import LevoError

log = logging.getLogger(__name__)

_FP_KEY = "__fingerprint__"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _canonical_default(obj):
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj)
        return {
            "ndarray": data.dtype.str,
            "shape": list(data.shape),
            "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"fingerprint parts must be JSON values or numpy arrays, got {type(obj).__name__}")


def canonical(parts: Mapping) -> dict:
    """The JSON form that `fingerprint` hashes: arrays become dtype+shape+sha256, numpy scalars plain numbers."""
    return orjson.loads(orjson.dumps(parts, default=_canonical_default))


def fingerprint(parts: Mapping) -> str:
    """sha256 hex of the canonical, key-sorted JSON of `parts` (model hash, sampling, seed, inputs, prompt)."""
    blob = orjson.dumps(parts, default=_canonical_default, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """A fingerprint that remembers its parts, so a mismatch can say which setting changed."""

    digest: str
    parts: dict

    @classmethod
    def of(cls, parts: Mapping) -> "Fingerprint":
        return cls(fingerprint(parts), canonical(parts))


FingerprintLike = str | Fingerprint


def _digest(fp: FingerprintLike) -> str:
    return fp.digest if isinstance(fp, Fingerprint) else fp


def differences(old: object, new: object, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    if old == new:
        return []

    def short(v: object) -> str:
        text = orjson.dumps(v).decode()
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{prefix.rstrip('.')}: {short(old)} -> {short(new)}"]


class StaleRecordError(LevoError, RuntimeError):
    """A finished record exists but was made with different settings (raised only by a strict store)."""


@dataclass
class Record:
    """A finished song: `tokens` is `[3, T]` int64, exactly as the LM returned them."""

    tokens: np.ndarray
    fingerprint: str
    meta: dict


class TokenStore:
    """Finished records and mid-song checkpoints under `SAVE_DIR/tokens/`.

    A record made with other settings is "stale": it is reported and regenerated, or, with `strict=True`,
    refused with `StaleRecordError` so that nobody overwrites expensive results by accident.
    """

    def __init__(self, save_dir: str | Path, strict: bool = False):
        self.dir = Path(save_dir) / "tokens"
        self.strict = strict
        self.dir.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(self.dir)

    def path(self, idx: str) -> Path:
        return self.dir / f"{idx}.npz"

    def partial_path(self, idx: str) -> Path:
        return self.dir / f"{idx}.partial.npz"

    def save(self, idx: str, tokens: np.ndarray, fp: FingerprintLike, meta: dict | None = None) -> None:
        """Store a finished song, then drop its checkpoint (a crash in between leaves both; "done" wins)."""
        if tokens.ndim != 2 or tokens.shape[0] != 3 or tokens.dtype.kind not in "iu":
            raise ValueError(f"song {idx}: expected integer tokens of shape [3, T], got {tokens.dtype} {tokens.shape}")
        meta = dict(meta or {})
        if isinstance(fp, Fingerprint):
            meta["fingerprint_parts"] = fp.parts
        arrays = {
            "tokens": tokens.astype(_narrowest_int(tokens)),
            "fingerprint": np.array(_digest(fp)),
            "meta": np.frombuffer(orjson.dumps(meta, default=_canonical_default), dtype=np.uint8),
        }
        atomic_write(self.path(idx), lambda f: np.savez(f, **arrays))
        self.partial_path(idx).unlink(missing_ok=True)

    def load(self, idx: str, fp: FingerprintLike) -> Record | None:
        """The finished record, or None when absent, unreadable or stale (strict stores raise on stale)."""
        record = self.load_any(idx)
        if record is None or record.fingerprint == _digest(fp):
            return record
        self._stale(idx, self.path(idx), record.meta.get("fingerprint_parts"), fp)
        return None

    def load_any(self, idx: str) -> Record | None:
        """The finished record whatever settings made it (decoding stored tokens needs no LM to check them)."""
        path = self.path(idx)
        if not path.exists():
            return None
        try:
            return read_record(path)
        except _UNREADABLE as e:
            moved = move_aside(path)
            log.warning("Unreadable token record %s (%s): moved aside to %s; song %s will be regenerated.",
                        path, e, moved.name, idx)
            return None

    def _stale(self, idx: str, path: Path, old_parts: dict | None, fp: FingerprintLike) -> None:
        changed = ""
        if old_parts is not None and isinstance(fp, Fingerprint):
            changed = "; changed: " + ", ".join(differences(old_parts, fp.parts))
        if self.strict:
            raise StaleRecordError(
                f"{path} holds tokens for song {idx} made with different settings{changed}. Rerun with "
                f"--overwrite to regenerate them, or use another SAVE_DIR to keep both."
            )
        log.warning("Stale token record %s (made with different settings%s); regenerating song %s.", path, changed, idx)

    def save_partial(self, idx: str, state: Mapping[str, np.ndarray], fp: FingerprintLike) -> None:
        """Checkpoint a song mid-generation; `state` is the LM's sampler state, stored array by array."""
        if _FP_KEY in state:
            raise ValueError(f"song {idx}: sampler state may not use the reserved key {_FP_KEY!r}")
        for key, value in state.items():
            if not isinstance(value, np.ndarray) or value.dtype.hasobject:
                raise TypeError(f"song {idx}: sampler state {key!r} must be a numeric numpy array")
        arrays = {**state, _FP_KEY: np.array(_digest(fp))}
        atomic_write(self.partial_path(idx), lambda f: np.savez(f, **arrays))

    def load_partial(self, idx: str, fp: FingerprintLike) -> dict[str, np.ndarray] | None:
        """The checkpoint to resume from, or None (absent, unreadable, or from other settings: start over)."""
        path = self.partial_path(idx)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz[_FP_KEY]) != _digest(fp):
                    log.info("Discarding checkpoint %s: it was made with different settings.", path)
                    return None
                return {key: npz[key] for key in npz.files if key != _FP_KEY}
        except _UNREADABLE as e:
            moved = move_aside(path)
            log.warning("Unreadable checkpoint %s (%s): moved aside to %s; song %s restarts from scratch.",
                        path, e, moved.name, idx)
            return None

    def remove(self, idx: str) -> None:
        """Forget a song (e.g. for --overwrite)."""
        self.path(idx).unlink(missing_ok=True)
        self.partial_path(idx).unlink(missing_ok=True)


def move_aside(path: Path) -> Path:
    """Rename an unreadable file to `*.corrupt` (kept for inspection, out of the run's way)."""
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    return target


_UNREADABLE = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile)


def read_record(path: Path) -> Record:
    """Raises one of `_UNREADABLE` when the file is damaged."""
    with np.load(path, allow_pickle=False) as npz:
        record = Record(tokens=npz["tokens"].astype(np.int64), fingerprint=str(npz["fingerprint"]),
                        meta=orjson.loads(npz["meta"].tobytes()))
    if record.tokens.ndim != 2 or record.tokens.shape[0] != 3:
        raise ValueError(f"tokens have shape {record.tokens.shape}")
    return record


def record_problem(path: Path) -> str | None:
    """Why a finished token record cannot be read, or None (absent or fine)."""
    if not path.exists():
        return None
    try:
        read_record(path)
    except _UNREADABLE as e:
        return f"its token record {path} is unreadable ({e})"
    return None


def _narrowest_int(a: np.ndarray) -> type:
    """Codes (< 16386) fit int16; anything else an LM might emit is kept exactly in a wider type."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    return next(t for t in (np.int16, np.int32, np.int64) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)


def _stored_digest(path: Path, key: str) -> str | None:
    """Read just the fingerprint member of an npz (np.load is lazy), None if missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return str(npz[key])
    except _UNREADABLE:
        return None
