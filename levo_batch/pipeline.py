"""One render run: validate every job, generate tokens (LM phase), decode audio (decoder phase), write outputs.

Each phase loads its model once and hands all pending songs to it; every result is persisted as soon as it
exists (token records, mid-song checkpoints, FLACs), so a run stopped at any point is resumed by running the
same command again. The models are reached only through `Stages`, which tests replace with small doubles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .interrupt import StopRequested, interruptible
from .jobs import Job, load_jobs
from .lock import RunLock
from .outputs import audio_paths, is_done, output_item, output_jsonl_path, write_flac, write_output_jsonl
from .progress import LMProgress, log, song_bar
from .stages import (
    AudioDecoder,
    DecodeRequest,
    Prompt,
    SongRequest,
    TokenGenerator,
    song_seed,
)
from .store import Fingerprint, TokenStore, sweep_temp_files
from .text import lm_texts


class PromptSource(Protocol):
    def prepare(self, job: Job, seed: int) -> Prompt: ...

    def release(self) -> None:
        """Free the separator and encoders: the LM and decoder need the memory next."""


class Stages(Protocol):
    """Factories for the models; each is called at most once per run, only when its phase has work."""

    def prompts(self) -> PromptSource: ...

    def generator(self) -> TokenGenerator: ...

    def decoder(self) -> AudioDecoder: ...


@dataclass
class RunOptions:
    input_path: Path
    save_dir: Path
    gen_type: str = "mixed"
    seed: int = 0
    tokens_only: bool = False
    decode_only: bool = False
    overwrite: bool = False
    dry_run: bool = False
    strict: bool = False
    save_dir_text: str | None = None
    """SAVE_DIR as typed: upstream writes `wav_path` from it verbatim."""


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def report(self) -> str:
        lines = [
            f"done {len(self.done)}, skipped {len(self.skipped)}, failed {len(self.failed)}; "
            f"{self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s"
        ]
        lines += [f"  failed {idx}: {why}" for idx, why in self.failed.items()]
        return "\n".join(lines)


def stems_for(gen_type: str) -> tuple[str, ...]:
    return ("main", "vocal", "bgm") if gen_type == "separate" else ("main",)


def lm_mode(gen_type: str) -> str:
    """Only --bgm changes what the LM sees; vocal/separate/mixed share one token record."""
    return "bgm" if gen_type == "bgm" else "song"


def run(opts: RunOptions, stages: Stages) -> Summary:
    """Render every job of `opts.input_path`; raises before touching SAVE_DIR if the input is invalid."""
    started = time.monotonic()
    jobs, warnings = load_jobs(opts.input_path, strict=opts.strict)
    for problem in warnings:
        log(f"warning: {problem}")
    summary = Summary()
    stems = stems_for(opts.gen_type)
    if opts.dry_run:
        print_plan(jobs, opts, stems)
        return summary
    opts.save_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(opts.save_dir), interruptible():
        store = TokenStore(opts.save_dir, strict=opts.strict)
        for folder in ("audios", "jsonl"):
            sweep_temp_files(opts.save_dir / folder)
        todo = []
        for job in jobs:
            if not opts.overwrite and is_done(opts.save_dir, job.idx, stems):
                summary.skipped.append(job.idx)
            else:
                todo.append(job)
        prompts: dict[str, Prompt] = {}
        if todo:
            prompts = prepare_prompts(todo, opts, stages, summary)
            todo = [job for job in todo if job.idx in prompts]
        if todo and not opts.decode_only:
            lm_phase(todo, prompts, opts, stages, store)
        if todo and not opts.tokens_only:
            decoder_phase(todo, prompts, opts, stages, store, summary, stems)
        if not opts.tokens_only:
            write_results(jobs, opts, store, stems)
    summary.wall_seconds = time.monotonic() - started
    return summary


def print_plan(jobs: Sequence[Job], opts: RunOptions, stems: tuple[str, ...]) -> None:
    for job in jobs:
        prompt = ("prompt audio" if job.prompt_audio_path else
                  f"auto prompt {job.auto_prompt_audio_type}" if job.auto_prompt_audio_type else "no prompt")
        print(f"{job.idx}: {planned_work(job, opts, stems)} [{prompt}]")
    print(f"{len(jobs)} jobs, generation type {opts.gen_type}, output {opts.save_dir}")


def planned_work(job: Job, opts: RunOptions, stems: tuple[str, ...]) -> str:
    """What a run would do for `job`, judged from the files alone (fingerprints need the model)."""
    if not opts.overwrite and is_done(opts.save_dir, job.idx, stems):
        return "audio present: skip"
    tokens = opts.save_dir / "tokens" / f"{job.idx}.npz"
    if opts.decode_only:
        return "decode stored tokens" if tokens.exists() else "no stored tokens: will fail (--decode-only)"
    if opts.overwrite:
        lm = "redo: LM"
    elif tokens.exists():
        lm = "tokens present (checked against the model at run time)"
    elif tokens.with_name(f"{job.idx}.partial.npz").exists():
        lm = "partial tokens: resume LM mid-song"
    else:
        lm = "new: LM"
    return lm if opts.tokens_only else f"{lm}, then decode"


def prepare_prompts(jobs: Sequence[Job], opts: RunOptions, stages: Stages, summary: Summary) -> dict[str, Prompt]:
    """Prompt tokens (LM) and audio (decoder); a bad prompt fails its own song only."""
    from .prompts.errors import PromptError

    source = None
    prompts: dict[str, Prompt] = {}
    for job in jobs:
        if not (job.prompt_audio_path or job.auto_prompt_audio_type):
            prompts[job.idx] = Prompt(tokens=None)
            continue
        source = source or stages.prompts()
        try:
            prompts[job.idx] = source.prepare(job, song_seed(opts.seed, job.idx))
        except PromptError as exc:
            summary.failed[job.idx] = str(exc)
            log(f"error: {job.idx}: {exc}")
    if source is not None:
        source.release()
    return prompts


def token_fingerprint(generator_fp: dict, request: SongRequest, mode: str) -> Fingerprint:
    """Everything that determines a song's tokens: the model and sampling, and the song's own LM inputs."""
    return Fingerprint.of({
        "lm": generator_fp,
        "seed": request.seed,
        "mode": mode,
        "lyrics": request.lyrics,
        "descriptions": request.descriptions,
        "prompt": request.prompt_tokens if request.prompt_tokens is not None else "none",
    })


class StoreSink:
    """TokenSink that persists every checkpoint and result before the run may be stopped."""

    def __init__(self, store: TokenStore, fps: dict[str, Fingerprint], metas: dict[str, dict], bars: LMProgress):
        self.store, self.fps, self.metas, self.bars = store, fps, metas, bars
        self.started: dict[str, float] = {}

    def checkpoint(self, idx: str, state: dict[str, np.ndarray]) -> None:
        self.store.save_partial(idx, state, self.fps[idx])
        StopRequested.check()

    def finished(self, idx: str, tokens: np.ndarray) -> None:
        """Records the song's LM wall time (first step to finish, this session) for `levo-batch evaluate`."""
        lm_seconds = round(time.monotonic() - self.started.get(idx, time.monotonic()), 3)
        self.store.save(idx, tokens, self.fps[idx], {**self.metas[idx], "lm_seconds": lm_seconds})
        self.bars.finished(idx, tokens.shape[-1])
        StopRequested.check()

    def progress(self, idx: str, step: int, total: int) -> None:
        self.started.setdefault(idx, time.monotonic())
        self.bars.step(idx, step, total)
        StopRequested.check()


def lm_phase(jobs: Sequence[Job], prompts: dict[str, Prompt], opts: RunOptions, stages: Stages,
             store: TokenStore) -> None:
    generator = stages.generator()
    generator_fp = generator.fingerprint()
    fps, metas, requests = {}, {}, []
    for job in jobs:
        prompt = prompts[job.idx]
        request = SongRequest(job.idx, *lm_texts(job.gt_lyric, job.descriptions, opts.gen_type), prompt.tokens,
                              song_seed(opts.seed, job.idx))
        fp = token_fingerprint(generator_fp, request, lm_mode(opts.gen_type))
        if opts.overwrite:
            store.remove(job.idx)
        elif store.load(job.idx, fp) is not None:
            store.partial_path(job.idx).unlink(missing_ok=True)  # a kill between record and cleanup
            continue
        request.resume = store.load_partial(job.idx, fp)
        fps[job.idx] = fp
        metas[job.idx] = {"seed": request.seed, "prompt": prompt.info}
        requests.append(request)
    if not requests:
        return
    resumed = sum(r.resume is not None for r in requests)
    log(f"LM phase: {len(requests)} songs" + (f" ({resumed} resumed mid-song)" if resumed else ""))
    with LMProgress(len(requests)) as bars:
        generator.generate(requests, StoreSink(store, fps, metas, bars))


def decoder_phase(jobs: Sequence[Job], prompts: dict[str, Prompt], opts: RunOptions, stages: Stages,
                  store: TokenStore, summary: Summary, stems: tuple[str, ...]) -> None:
    requests = []
    for job in jobs:
        record = store.load_any(job.idx)
        if record is None:
            summary.failed.setdefault(job.idx, "no complete tokens to decode (run without --decode-only)")
            continue
        requests.append(DecodeRequest(job.idx, record.tokens, opts.gen_type, song_seed(opts.seed, job.idx),
                                      prompts[job.idx].audio))
    if not requests:
        return
    decoder = stages.decoder()
    log(f"decoder phase: {len(requests)} songs")
    with song_bar(len(requests), "decoding") as bar:
        pending = {r.idx: r for r in requests}
        try:
            decode_into(decoder, list(pending.values()), opts, pending, summary, bar)
        except StopRequested:
            raise
        except Exception as exc:  # one bad song must not sink the batch: retry the rest one by one
            log(f"warning: batched decode failed ({exc}); decoding the remaining songs one at a time")
            for request in list(pending.values()):
                try:
                    decode_into(decoder, [request], opts, pending, summary, bar)
                except StopRequested:
                    raise
                except Exception as one:
                    pending.pop(request.idx)
                    summary.failed[request.idx] = f"decoding failed: {one}"
                    log(f"error: {request.idx}: decoding failed: {one}")


def decode_into(decoder: AudioDecoder, requests: list[DecodeRequest], opts: RunOptions,
                pending: dict[str, DecodeRequest], summary: Summary, bar) -> None:
    for idx, audio in decoder.decode(requests):
        paths = audio_paths(opts.save_dir, idx, tuple(audio))
        for stem, path in paths.items():
            write_flac(path, audio[stem], decoder.sample_rate)
        pending.pop(idx, None)
        summary.done.append(idx)
        summary.audio_seconds += audio["main"].shape[-1] / decoder.sample_rate
        bar.update(1)
        StopRequested.check()


def write_results(jobs: Sequence[Job], opts: RunOptions, store: TokenStore, stems: tuple[str, ...]) -> None:
    """Upstream's result jsonl: every finished item in input order, plus `wav_path` and prompt facts."""
    items = []
    for job in jobs:
        if not is_done(opts.save_dir, job.idx, stems):
            continue
        record = store.load_any(job.idx)
        extra = record.meta.get("prompt") if record is not None else None
        items.append(output_item(job.item, opts.save_dir_text or str(opts.save_dir), extra))
    if items:
        write_output_jsonl(output_jsonl_path(opts.save_dir, opts.input_path), items)
