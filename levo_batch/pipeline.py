"""One render run: validate every job, generate tokens (LM phase), decode audio (decoder phase), write outputs.

Each phase loads its model once and hands all pending songs to it; every result is persisted as soon as it
exists (token records, mid-song checkpoints, FLACs), so a run stopped at any point is resumed by running the
same command again. The models are reached only through `contracts.Stages`, which tests replace with small doubles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import provenance
from .atomic import sweep_temp_files
from .contracts import DEFAULT_SEED, AudioDecoder, DecodeRequest, Prompt, SongRequest, Stages, song_seed
from .errors import PromptError, StorageError
from .gen_types import GEN_TYPES
from .interrupt import StopRequested, interruptible, stop_at_once
from .jobs import Job, load_jobs
from .outputs import audio_paths, is_done, output_jsonl_path, write_flac
from .preflight import Needs, decode_only_problems, raise_if, save_dir_problems
from .progress import LMProgress, SongProgress, log, timed
from .results import assemble_if_last
from .shards import WHOLE, Shard, shard_lock
from .store import Fingerprint, TokenStore, read_record, record_problem
from .text import lm_texts


@dataclass
class RunOptions:
    input_path: Path
    save_dir: Path
    gen_type: str = "mixed"
    seed: int = DEFAULT_SEED
    tokens_only: bool = False
    decode_only: bool = False
    overwrite: bool = False
    dry_run: bool = False
    strict: bool = False
    save_dir_text: str | None = None
    """SAVE_DIR as typed: upstream writes `wav_path` from it verbatim."""
    shard: Shard = WHOLE
    """The songs of this process (`--shard K/N` or the scheduler's environment); others are left alone."""
    banner: tuple[str, ...] = ()
    """Lines that describe how this run renders (shard, memory mode), logged first once every check passed."""


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    """SAVE_DIR's audio folder and output jsonl, named in the report."""
    tokens_only: bool = False
    """`done` counts songs whose tokens were made; no audio was written."""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def report(self) -> str:
        made = "tokens only, no audio" if self.tokens_only else f"{self.audio_seconds:.1f} s of audio"
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)}, failed {len(self.failed)}; "
                 f"{made} in {self.wall_seconds:.1f} s"]
        lines += [f"  failed {idx}: {why}" for idx, why in self.failed.items()]
        if self.outputs:
            lines.append("outputs: " + ", ".join(map(str, self.outputs)))
        return "\n".join(lines)


def run(opts: RunOptions, stages: Stages) -> Summary:
    """Render every job of `opts.input_path`; raises before touching SAVE_DIR if anything cannot work."""
    started = time.monotonic()
    all_jobs, warnings = load_jobs(opts.input_path, strict=opts.strict, gen_type=opts.gen_type)
    jobs = opts.shard.select(all_jobs)
    summary = Summary(tokens_only=opts.tokens_only)
    stems = GEN_TYPES[opts.gen_type].stems
    raise_if(save_dir_problems(opts.save_dir) + stages.check(not opts.decode_only))
    settings = stages.recipe(not opts.decode_only)
    recipes = {job.idx: provenance.song_recipe(job, opts.gen_type, opts.seed, settings) for job in jobs}
    todo, redo = plan_songs(jobs, opts, stems, recipes)
    if redo and opts.strict:
        raise provenance.strict_refusal(redo)
    raise_if(stages.assets(Needs.of(todo, tokens_only=opts.tokens_only, decode_only=opts.decode_only))
             + (decode_only_problems(todo, opts.save_dir / "tokens") if opts.decode_only else []))
    for line in opts.banner:
        log(line)
    if not opts.shard.whole:
        log(f"shard {opts.shard.label}: {len(jobs)} of {len(all_jobs)} songs")
    for problem in warnings:
        log(f"warning: {problem}")
    if opts.dry_run:
        print_plan(jobs, opts, stems, redo)
        return summary
    pending = {job.idx for job in todo}
    summary.skipped = [job.idx for job in jobs if job.idx not in pending]
    summary.outputs = [opts.save_dir / "tokens"] if opts.tokens_only else \
        [opts.save_dir / "audios", output_jsonl_path(opts.save_dir, opts.input_path)]
    log(f"{len(jobs)} songs in {opts.input_path}: {len(todo)} to render, {len(summary.skipped)} already done")
    for idx, why in redo.items():
        log(f"re-rendering {idx}: {why}")
    opts.save_dir.mkdir(parents=True, exist_ok=True)
    with shard_lock(opts.save_dir, opts.shard), interruptible():
        store = TokenStore(opts.save_dir, strict=opts.strict)
        for folder in ("audios", "jsonl", provenance.FOLDER):
            sweep_temp_files(opts.save_dir / folder)
        for job in todo:
            provenance.set_aside_unreadable(opts.save_dir, job.idx)
        prompts: dict[str, Prompt] = {}
        if todo:
            prompts = prepare_prompts(todo, opts, stages, summary)
            todo = [job for job in todo if job.idx in prompts]
        if todo and not opts.decode_only:
            lm_phase(todo, prompts, opts, stages, store, recipes)
            if opts.tokens_only:
                summary.done = [job.idx for job in todo]
        if todo and not opts.tokens_only:
            decoder_phase(todo, prompts, opts, stages, store, summary, stems, recipes)
    if not opts.tokens_only:  # after releasing the lock, so that the last process to finish sees no live one
        assemble_if_last(all_jobs, opts.save_dir, opts.input_path, opts.save_dir_text or str(opts.save_dir), stems)
    summary.wall_seconds = time.monotonic() - started
    return summary


def plan_songs(jobs: Sequence[Job], opts: RunOptions, stems: tuple[str, ...],
               recipes: dict[str, dict]) -> tuple[list[Job], dict[str, str]]:
    """Songs to render, and why each finished one must be re-rendered (reads files only, writes nothing)."""
    todo, redo = [], {}
    for job in jobs:
        if opts.overwrite or not is_done(opts.save_dir, job.idx, stems):
            todo.append(job)
            continue
        tokens_path = opts.save_dir / "tokens" / f"{job.idx}.npz"
        if opts.decode_only and not tokens_path.exists():
            continue  # finished audio and nothing stored to decode it from: it stays
        why = record_problem(tokens_path)
        if why is None:
            tokens = read_record(tokens_path).fingerprint if opts.decode_only else None
            why = provenance.stale_reason(opts.save_dir, job.idx, stems, recipes[job.idx], tokens)
        if why is not None:
            redo[job.idx] = why
            todo.append(job)
    return todo, redo


def print_plan(jobs: Sequence[Job], opts: RunOptions, stems: tuple[str, ...], redo: dict[str, str]) -> None:
    for job in jobs:
        prompt = ("prompt audio" if job.prompt_audio_path else
                  f"auto prompt {job.auto_prompt_audio_type}" if job.auto_prompt_audio_type else "no prompt")
        work = f"re-render ({redo[job.idx]})" if job.idx in redo else planned_work(job, opts, stems)
        print(f"{job.idx}: {work} [{prompt}]")
    print(f"{len(jobs)} jobs, generation type {opts.gen_type}, output {opts.save_dir}")


def planned_work(job: Job, opts: RunOptions, stems: tuple[str, ...]) -> str:
    """What a run would do for `job`, judged from the files alone (fingerprints need the model)."""
    if not opts.overwrite and is_done(opts.save_dir, job.idx, stems):
        return "audio present: skip"
    tokens = opts.save_dir / "tokens" / f"{job.idx}.npz"
    if opts.decode_only:
        return "decode stored tokens"
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
    source = None
    prompts: dict[str, Prompt] = {}
    for job in jobs:
        if not (job.prompt_audio_path or job.auto_prompt_audio_type):
            prompts[job.idx] = Prompt(tokens=None)
            continue
        source = source or stages.prompts()
        started = time.monotonic()
        try:
            with stop_at_once():
                prompts[job.idx] = source.prepare(job, song_seed(opts.seed, job.idx))
            log(f"prompt of {job.idx} ready: {time.monotonic() - started:.1f} s")
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
             store: TokenStore, recipes: dict[str, dict]) -> None:
    with timed("loading the LM"), stop_at_once():
        generator = stages.generator()
    generator_fp = generator.fingerprint()
    fps, metas, requests = {}, {}, []
    version = stages.lm_version()
    for job in jobs:
        prompt = prompts[job.idx]
        request = SongRequest(job.idx, *lm_texts(job.gt_lyric, job.descriptions, opts.gen_type, version),
                              prompt.tokens, song_seed(opts.seed, job.idx))
        fp = token_fingerprint(generator_fp, request, GEN_TYPES[opts.gen_type].lm_mode)
        if opts.overwrite:
            store.remove(job.idx)
        elif store.load(job.idx, fp) is not None:
            store.partial_path(job.idx).unlink(missing_ok=True)  # a kill between record and cleanup
            continue
        request.resume = store.load_partial(job.idx, fp)
        fps[job.idx] = fp
        metas[job.idx] = {"seed": request.seed, "prompt": prompt.info, "recipe_lm": recipes[job.idx].get("lm")}
        requests.append(request)
    if not requests:
        return
    resumed = sum(r.resume is not None for r in requests)
    log(f"LM phase: {len(requests)} songs" + (f" ({resumed} resumed mid-song)" if resumed else ""))
    with LMProgress(len(requests)) as bars:
        generator.generate(requests, StoreSink(store, fps, metas, bars))


def decoder_phase(jobs: Sequence[Job], prompts: dict[str, Prompt], opts: RunOptions, stages: Stages,
                  store: TokenStore, summary: Summary, stems: tuple[str, ...], recipes: dict[str, dict]) -> None:
    requests, writer = [], AudioWriter(opts, summary)
    for job in jobs:
        record = store.load_any(job.idx)
        if record is None:
            summary.failed.setdefault(job.idx, "no complete tokens to decode (run without --decode-only)")
            continue
        recipe = recipes[job.idx]
        if opts.decode_only:
            recipe = {**recipe, "lm": record.meta.get("recipe_lm")}
        writer.records[job.idx] = (recipe, record.fingerprint, job.item, prompts[job.idx].info)
        requests.append(DecodeRequest(job.idx, record.tokens, opts.gen_type, song_seed(opts.seed, job.idx),
                                      prompts[job.idx].audio))
    if not requests:
        return
    with timed("loading the decoder"), stop_at_once():
        writer.decoder = stages.decoder()
    log(f"decoder phase: {len(requests)} songs")
    with SongProgress(len(requests), "decoding") as writer.bar:
        pending = {r.idx: r for r in requests}
        try:
            writer.decode(list(pending.values()), pending)
        except (StopRequested, StorageError):
            raise
        except Exception as exc:  # one bad song must not sink the batch: retry the rest one by one
            log(f"warning: batched decode failed ({exc}); decoding the remaining songs one at a time")
            for request in list(pending.values()):
                try:
                    writer.decode([request], pending)
                except (StopRequested, StorageError):
                    raise
                except Exception as one:
                    pending.pop(request.idx)
                    summary.failed[request.idx] = f"decoding failed: {one}"
                    log(f"error: {request.idx}: decoding failed: {one}")


class AudioWriter:
    """Writes each decoded song's FLACs, then its provenance record (so a record always matches its files)."""

    def __init__(self, opts: RunOptions, summary: Summary):
        self.opts, self.summary = opts, summary
        self.records: dict[str, tuple[dict, str, dict, dict]] = {}
        self.decoder: AudioDecoder | None = None
        self.bar = None

    def decode(self, requests: list[DecodeRequest], pending: dict[str, DecodeRequest]) -> None:
        save_dir = self.opts.save_dir
        songs = self.decoder.decode(requests)
        while True:
            with stop_at_once():  # decoding writes nothing until a song is complete
                idx, audio = next(songs, (None, None))
            if idx is None:
                return
            for stem, path in audio_paths(save_dir, idx, tuple(audio)).items():
                write_flac(path, audio[stem], self.decoder.sample_rate)
            recipe, tokens, item, facts = self.records[idx]
            provenance.write(save_dir, idx, tuple(audio), recipe, tokens, item, facts)
            pending.pop(idx, None)
            self.summary.done.append(idx)
            self.summary.audio_seconds += audio["main"].shape[-1] / self.decoder.sample_rate
            self.bar.update(idx)
            StopRequested.check()
