"""`--gpus all|0,1,…`: one worker process per GPU of this host, each rendering one shard of the album.

Each worker is the same `levo-batch generate` command with `--shard K/N` added and `CUDA_VISIBLE_DEVICES` set to
its one GPU, so MLX and torch in it both see a single device 0 and nothing else (no memory on the other GPUs, no
device flags to thread through). Workers are independent processes sharing SAVE_DIR exactly as cluster shards
do: their own locks, and the last one to finish assembles the output jsonl. A run inside a scheduler's
shard (a Slurm array task with `--gpus all`) splits that shard, not the whole file (`Shard.split`).

The parent draws one view: a bar over the album's songs, counted from the files the workers write (a song is
finished when its flacs exist, or its token record with `--tokens-only`), with the LM's count and each GPU's
beside it; the workers' own messages are passed through prefixed by their GPU, their bars dropped. Workers run
in their own sessions, so a terminal's Ctrl-C reaches only the parent, which forwards SIGINT/SIGTERM once per signal:
the first asks every worker to stop at its next safe point, a second stops them at once, as in one process.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from .errors import LevoError
from .shards import Shard

WORKER_ENV = "LEVO_BATCH_GPU_WORKER"
"""Set in every worker (to its GPU): a worker never starts workers of its own."""
_STRIPPED = ("--gpus", "--shard", "--shards")
_POLL_S = 1.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BAR = re.compile(r"^[^|]*:\s*\d+%\|")
_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")


class GpuError(LevoError, ValueError):
    """`--gpus` names no usable GPU."""


def visible_devices(env: dict[str, str]) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (indices or GPU-/MIG- UUIDs), or None when it is not set."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]


def count_gpus() -> int:
    """GPUs of this host: nvidia-smi's list, else torch's CUDA device count (MLX CUDA sees the same devices)."""
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            listed = None
        if listed is not None and listed.returncode == 0:
            return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def select_gpus(text: str, env: dict[str, str] | None = None) -> list[str]:
    """`all` or `0,1,…` -> the CUDA_VISIBLE_DEVICES value of each worker.

    Indices count within an inherited CUDA_VISIBLE_DEVICES (what Slurm or a container grants), as CUDA does;
    entries that are not numbers (GPU-/MIG- UUIDs) are used as given.
    """
    env = dict(os.environ) if env is None else env
    granted = visible_devices(env)
    if text.strip() == "all":
        devices = granted if granted is not None else [str(i) for i in range(count_gpus())]
        if not devices:
            raise GpuError("--gpus all: no GPU found (CUDA_VISIBLE_DEVICES is empty or nvidia-smi and torch see "
                           "none); name them (--gpus 0,1) or run without --gpus")
        return devices
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise GpuError(f"--gpus {text!r}: expected all or a comma-separated list such as 0,1,2")
    if len(set(devices)) != len(devices):
        raise GpuError(f"--gpus {text}: a GPU is listed twice; two workers on one GPU would only compete for it")
    if granted is not None:
        out_of_range = [d for d in devices if d.isdigit() and int(d) >= len(granted)]
        if out_of_range:
            raise GpuError(f"--gpus {text}: only {len(granted)} GPUs are visible (CUDA_VISIBLE_DEVICES="
                           f"{env['CUDA_VISIBLE_DEVICES']}); indices count within that list")
        devices = [granted[int(d)] if d.isdigit() else d for d in devices]
    return devices


def worker_argv(argv: Sequence[str], shard: Shard) -> list[str]:
    """The generate command line of one worker: ours without --gpus/--shard/--shards, plus its --shard."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in _STRIPPED:
            skip = True
        elif not token.startswith(tuple(f"{opt}=" for opt in _STRIPPED)):
            out.append(token)
    return [*out, "--shard", shard.label]


@dataclass
class Worker:
    """One worker: its GPU, its shard and the songs it owns (for the progress view)."""

    gpu: str
    shard: Shard
    argv: list[str]
    songs: list[str]
    proc: subprocess.Popen | None = None
    finished: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    last_summary: str = ""

    @property
    def name(self) -> str:
        return f"gpu {self.gpu}"


def _has_tokens(save_dir: Path, idx: str) -> bool:
    return (save_dir / "tokens" / f"{idx}.npz").exists()


def _pump(worker: Worker, stream: IO[str], lock: threading.Lock) -> None:
    """Pass a worker's messages through, prefixed by its GPU; drop its progress bars (the parent draws one)."""
    from .progress import log

    for line in stream:
        for segment in re.split(r"[\r\n]", _ANSI.sub("", line)):
            text = _STAMP.sub("", segment.rstrip())  # the parent's log line carries its own time
            if not text.strip() or _BAR.match(text):
                continue
            if text.startswith("done "):
                worker.last_summary = text
            with lock:
                log(f"[{worker.name}] {text}")


class Supervisor:
    """Runs the workers, draws the combined progress, forwards signals, reports every worker's outcome."""

    def __init__(self, workers: list[Worker], save_dir: Path, stems: tuple[str, ...], tokens_only: bool,
                 progress: bool = True):
        self.workers, self.save_dir, self.stems, self.tokens_only = workers, save_dir, stems, tokens_only
        self.progress = progress
        self.interrupted = False
        self._lock = threading.Lock()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        pumps = []
        try:
            try:
                for worker in self.workers:
                    pumps.append(self._start(worker))
            except BaseException:  # a worker that cannot start: stop the ones that did, they are in their own sessions
                self._forward(signal.SIGTERM, None)
                raise
            if self.progress:
                self._draw()
            for worker in self.workers:
                worker.proc.wait()
            for pump in pumps:
                pump.join(timeout=10)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._report()

    def _start(self, worker: Worker) -> threading.Thread:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=worker.gpu, **{WORKER_ENV: worker.gpu})
        worker.proc = subprocess.Popen(worker.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", start_new_session=True)
        pump = threading.Thread(target=_pump, args=(worker, worker.proc.stdout, self._lock), daemon=True)
        pump.start()
        return pump

    def _draw(self) -> None:
        """The album view until every worker has exited (a bar on a terminal, timestamped lines in a log); it
        counts the songs left at the start, so songs finished before this run do not inflate its rate."""
        from .progress import PhaseProgress

        self._count()
        before = self._finished()
        left = sum(len(w.songs) for w in self.workers) - before
        view = PhaseProgress(left, "album") if left else None
        try:
            while any(w.proc.poll() is None for w in self.workers):
                time.sleep(_POLL_S)
                self._count()
                if view is not None:
                    view.advance(self._finished() - before, self._per_gpu())
            self._count()  # once more after the last worker exits: its last songs count
            if view is not None:
                view.advance(self._finished() - before, self._per_gpu())
                if view.bar is None:  # a log gets the final count too, not only one line per interval
                    view.line(self._per_gpu())
        finally:
            if view is not None:
                view.close()

    def _forward(self, signum, frame) -> None:
        self.interrupted = True
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    def _count(self) -> None:
        from .outputs import is_done

        for worker in self.workers:
            worker.tokens.update(idx for idx in worker.songs
                                 if idx not in worker.tokens and _has_tokens(self.save_dir, idx))
            done = worker.tokens if self.tokens_only else (
                idx for idx in worker.songs if idx not in worker.finished and is_done(self.save_dir, idx, self.stems))
            worker.finished.update(done)

    def _finished(self) -> int:
        return sum(len(w.finished) for w in self.workers)

    def _per_gpu(self) -> str:
        """The LM phase lasts longest and finishes no song: its token count comes first, then each GPU's songs."""
        tokens = sum(len(w.tokens) for w in self.workers)
        songs = sum(len(w.songs) for w in self.workers)
        return f"LM {tokens}/{songs} | " + " ".join(f"gpu {w.gpu}: {len(w.finished)}/{len(w.songs)}"
                                                    for w in self.workers)

    def _report(self) -> int:
        from .progress import log

        codes = []
        for worker in self.workers:
            rc = worker.proc.returncode
            code = 128 - rc if rc < 0 else rc  # killed by a signal: the shell's 128 + signal number
            codes.append(code)
            outcome = "ok" if code == 0 else f"FAILED (exit {code})"
            log(f"{worker.name}, shard {worker.shard.label}: {outcome}" +
                (f"; {worker.last_summary}" if worker.last_summary else ""))
        failed = [w.name for w, code in zip(self.workers, codes) if code]
        if self.interrupted and failed:
            log("interrupted: everything finished so far is saved; resume with the same command")
            return 130
        if failed:
            log(f"{len(failed)} of {len(self.workers)} workers failed ({', '.join(failed)}); run the same command "
                f"again to retry their songs")
        return max(codes)


def launch(args: argparse.Namespace, shard: Shard) -> int:
    """`generate --gpus`: validate the jsonl once, then one worker per GPU; the exit code of the worst worker."""
    from .cli import gen_type_of
    from .gen_types import GEN_TYPES
    from .jobs import JobsError, load_jobs
    from .progress import log
    from .results import assemble_if_last

    if os.environ.get(WORKER_ENV):
        log(f"error: --gpus inside a --gpus worker ({WORKER_ENV}={os.environ[WORKER_ENV]}); "
            f"give --gpus once, to the parent command")
        return 2
    try:
        devices = select_gpus(args.gpus)
        jobs, _ = load_jobs(args.input_jsonl, strict=args.strict)
    except GpuError as exc:
        log(f"error: {exc}")
        return 2
    except JobsError as exc:
        log(str(exc))
        return 2
    base = [sys.executable, "-m", "levo_batch"]
    idx = [job.idx for job in jobs]
    workers = [Worker(gpu, part, base + worker_argv(args.argv, part), part.select(idx))
               for gpu, part in zip(devices, shard.split(len(devices)))]
    where = "" if shard.whole else f" of {shard.describe()}"
    log(f"{len(workers)} workers{where}: " + ", ".join(f"{w.name} shard {w.shard.label} ({len(w.songs)} songs)"
                                                      for w in workers))
    if args.dry_run:
        return Supervisor(workers, Path(args.save_dir), (), True, progress=False).run()
    stems = GEN_TYPES[gen_type_of(args)].stems
    code = Supervisor(workers, Path(args.save_dir), stems, args.tokens_only).run()
    if not args.tokens_only and code != 130:  # a worker killed before assembling leaves it to us
        assemble_if_last(jobs, Path(args.save_dir), args.input_jsonl, args.save_dir, stems)
    return code
