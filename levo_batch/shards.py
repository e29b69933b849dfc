"""Static shards: which songs of the jsonl this process renders, taken from `--shard K/N` or the scheduler.

Shard K of N owns the songs whose position in the jsonl (0-based, blank lines not counted) is ≡ K mod N.
Positions, not idx hashes: every shard sees the same file, the split is visible at a glance, and shards of
one N never overlap while together they cover the file exactly once. A song's tokens and audio depend only
on its seed (run seed + idx), never on the shard, so any N gives the same album and a re-run with another N
simply skips what is already rendered.

The scheduler engines we read (so a job script needs no arithmetic):

- Slurm job arrays: `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT` (and the array's
  `SLURM_ARRAY_TASK_STEP`): `--array=0-7`, `--array=1-8` and `--array=0-14:2` are all 8 shards.
- Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`. A pod is not told the Job's `completions`, so the count
  comes from `--shards N` (set it to `completions`).

Every shard holds its own lock file in SAVE_DIR (`.levo_batch.shard-K-of-N.lock`; the whole file keeps
`.levo_batch.lock`), so two processes of one shard are refused while different shards run side by side. A
run also refuses to start while a live run of another sharding (another N, or the whole file) owns some of
its songs.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence, TypeVar

from .errors import LevoError
from .lock import LOCK_NAME, LockHeldError, RunLock, live_holder

T = TypeVar("T")

_LOCK_RE = re.compile(r"^\.levo_batch\.shard-(\d+)-of-(\d+)\.lock$")


class ShardError(LevoError, ValueError):
    """A shard given on the command line or by the scheduler's environment makes no sense."""


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    source: str = field(default="default", compare=False)
    """Where the shard came from, for the first log line (`--shard`, `SLURM_ARRAY_TASK_ID=5 ...`)."""

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardError(f"shard {self.index}/{self.count} ({self.source}): need 0 <= K < N and N >= 1")

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: Sequence[T]) -> list[T]:
        """The items at positions ≡ index mod count, in input order."""
        return list(items[self.index::self.count])

    def overlaps(self, other: "Shard") -> bool:
        """Whether two shards (of any counts) share a position: K ≡ K' mod gcd(N, N') (Chinese remainders)."""
        return (self.index - other.index) % math.gcd(self.count, other.count) == 0

    def split(self, parts: int) -> list["Shard"]:
        """This shard cut in `parts` shards of count N*parts that together own exactly this shard's positions.

        Position p belongs to worker g when p ≡ K mod N and (p div N) ≡ g mod parts, i.e. p ≡ K + N*g mod
        N*parts; so `--gpus` inside a Slurm array task splits that task's songs, not the whole file.
        """
        return [Shard(self.index + self.count * g, self.count * parts, f"{self.source}, worker {g}")
                for g in range(parts)]

    @property
    def lock_name(self) -> str:
        return LOCK_NAME if self.whole else f".levo_batch.shard-{self.index}-of-{self.count}.lock"

    def describe(self) -> str:
        return f"shard {self.label} (from {self.source})"


WHOLE = Shard()


def parse_shard(text: str, source: str = "--shard") -> Shard:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ShardError(f"{source} {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/4")
    return Shard(int(m.group(1)), int(m.group(2)), source)


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise ShardError(f"{name} is not set: cannot tell this Slurm array task's shard; pass --shard K/N") from None
    except ValueError:
        raise ShardError(f"{name}={env[name]!r} is not a number; pass --shard K/N") from None


def _slurm(env: Mapping[str, str]) -> Shard:
    task, first, count = (_env_int(env, n) for n in
                          ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"))
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
    source = (f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={first}, SLURM_ARRAY_TASK_COUNT={count}"
              + (f", SLURM_ARRAY_TASK_STEP={step}" if step != 1 else ""))
    offset, rest = divmod(task - first, max(step, 1))
    if rest or not 0 <= offset < count:
        raise ShardError(f"Slurm array task {task} is not one of {count} evenly spaced tasks from {first} "
                         f"(step {step}); use an array like --array=0-{count - 1}, or pass --shard K/N")
    return Shard(offset, count, source)


def _kubernetes(env: Mapping[str, str], shards: int | None) -> Shard:
    index = env["JOB_COMPLETION_INDEX"]
    if shards is None:
        raise ShardError(f"JOB_COMPLETION_INDEX={index} (Kubernetes Indexed Job) but no shard count: pass "
                         f"--shards N with N = the Job's completions")
    if not index.isdigit():
        raise ShardError(f"JOB_COMPLETION_INDEX={index!r} is not a number; pass --shard K/N")
    return Shard(int(index), shards, f"JOB_COMPLETION_INDEX={index}, --shards {shards}")


def resolve_shard(flag: str | None, shards: int | None, env: Mapping[str, str] | None = None) -> Shard:
    """`--shard` wins; then a Slurm array task; then a Kubernetes Indexed Job; else the whole file."""
    env = os.environ if env is None else env
    if flag is not None:
        return parse_shard(flag)
    if "SLURM_ARRAY_TASK_ID" in env:
        return _slurm(env)
    if "JOB_COMPLETION_INDEX" in env:
        return _kubernetes(env, shards)
    if shards is not None:
        raise ShardError("--shards N needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job); elsewhere pass "
                         "--shard K/N")
    return WHOLE


def shard_of_lock(name: str) -> Shard | None:
    """The shard a lock file in SAVE_DIR belongs to (None: not a levo_batch lock)."""
    if name == LOCK_NAME:
        return WHOLE
    m = _LOCK_RE.match(name)
    return Shard(int(m.group(1)), int(m.group(2)), name) if m else None


def live_shards(save_dir: Path) -> list[tuple[Shard, dict | None]]:
    """The shards whose runs are alive now, with their holders (PID, host) as their lock files name them."""
    found = []
    for path in sorted(Path(save_dir).glob(".levo_batch*.lock")):
        shard = shard_of_lock(path.name)
        if shard is not None:
            alive, holder = live_holder(path)
            if alive:
                found.append((shard, holder))
    return found


@contextmanager
def shard_lock(save_dir: Path, shard: Shard) -> Iterator[RunLock]:
    """Hold this shard's lock; refuse if a live run of another sharding owns some of our songs.

    The check runs after our own lock is taken, so of two overlapping runs starting together at least one
    sees the other and stops.
    """
    what = None if shard.whole else f"shard {shard.label} of SAVE_DIR {save_dir}"
    with RunLock(save_dir, shard.lock_name, what) as lock:
        for other, holder in live_shards(save_dir):
            if other.lock_name != shard.lock_name and other.overlaps(shard):
                who = f"PID {holder['pid']} on host {holder.get('host', '?')}" if holder else "a starting run"
                theirs = "the whole file" if other.whole else f"shard {other.label}"
                ours = "the whole file" if shard.whole else f"shard {shard.label}"
                raise LockHeldError(
                    f"SAVE_DIR {save_dir} is in use by a run of {theirs} ({who}), which shares songs with "
                    f"{ours}. Wait for it to finish, or run the same shard count N as the runs in flight.")
        yield lock
