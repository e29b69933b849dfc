"""End-to-end benchmark: a test100-style album rendered by the real pipeline (LM + decoder + FLAC outputs).

Builds random-weight checkpoints in the real file formats (bench/common.py), writes a synthetic jsonl of
English and Chinese songs, runs `levo_batch.pipeline.run` in-process with the production stages, and
prints phase timings against the product targets (100 songs <= 10 min on one H100, >= 1000 songs/hour,
decoder <= 1.5 s per 150-s song).

Random LM weights never emit EOS here (see `common.lm_weight`), so every song runs to `--duration`: a worst
case, real songs often end earlier. Times are measured by wrapping the stage factories and the phase calls;
the product is not modified.

    python bench/e2e.py --tiny                                              # tiny models on CPU, seconds
    python bench/e2e.py --size large --songs 16 --batch-size 16 --work outputs/e2e   # one LM wave, extrapolated
    python bench/e2e.py --size large --songs 100 --batch-size 16 --work outputs/e2e  # the headline album
    python bench/e2e.py --size large --songs 16 --work outputs/e2e --lm-only --quantize 4
    python bench/e2e.py --size large --songs 16 --work outputs/e2e --decoder-only --decoder-batch 8

`--work` keeps the built checkpoints (~15 GB at large size, a few minutes to write) for later runs; outputs/
is git-ignored, so it survives between commands on a warm machine.
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from levo_batch.stages import KV_CACHE_BITS, LM_DTYPES, GenerationSettings

from common import find_fixtures, lm_config, write_lm_checkpoint, write_runtime, write_songs

TARGET_SONGS = 100
TARGET_ALBUM_S = 600.0
TARGET_SONGS_PER_HOUR = 1000.0
TARGET_DECODER_S = 0.5
REFERENCE_SONG_S = 150.0
TINY_DECODER = {"duration": 4}
"""Tiny runs use 4-s decoder windows (100 frames) instead of upstream's 40 s, so CPU smoke runs take seconds."""


@dataclass
class Timings:
    lm_load: float = 0.0
    lm_generate: float = 0.0
    lm_steps: int = 0
    lm_song_steps: int = 0
    decoder_load: float = 0.0
    decoder_compute: float = 0.0
    decoder_songs: int = 0
    decoder_info: dict | None = None


class CountingSink:
    """Passes every report on, counting song-steps and batched steps.

    The generator reports each running song once per batched step, so a round of reports (until some song
    is reported again) is one step. A freshly inserted song's first report can join the previous round,
    so the count may fall short by one per refill (a few in thousands of steps).
    """

    def __init__(self, inner, timings: Timings):
        self.inner, self.timings = inner, timings
        self._round: set[str] = set()

    def checkpoint(self, idx, state) -> None:
        self.inner.checkpoint(idx, state)

    def finished(self, idx, tokens) -> None:
        self.inner.finished(idx, tokens)

    def progress(self, idx, step, total) -> None:
        if not self._round or idx in self._round:
            self.timings.lm_steps += 1
            self._round.clear()
        self._round.add(idx)
        self.timings.lm_song_steps += 1
        self.inner.progress(idx, step, total)


class TimedGenerator:
    def __init__(self, inner, timings: Timings):
        self.inner, self.timings = inner, timings

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, songs, sink) -> None:
        start = time.perf_counter()
        self.inner.generate(songs, CountingSink(sink, self.timings))
        self.timings.lm_generate += time.perf_counter() - start


class TimedDecoder:
    """Counts only the time spent inside the decoder's iterator, not the pipeline's FLAC writing."""

    def __init__(self, inner, timings: Timings):
        self.inner, self.timings = inner, timings

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, songs):
        songs_out = iter(self.inner.decode(songs))
        while True:
            start = time.perf_counter()
            item = next(songs_out, None)
            self.timings.decoder_compute += time.perf_counter() - start
            if item is None:
                return
            self.timings.decoder_songs += 1
            yield item


class TimedStages:
    """The production stages with their factories and phase calls timed. Keeps no reference to the models,
    so `DefaultStages.decoder()` can still free the LM before the decoder loads."""

    def __init__(self, inner):
        self.inner = inner
        self.timings = Timings()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generator(self):
        start = time.perf_counter()
        generator = self.inner.generator()
        self.timings.lm_load = time.perf_counter() - start
        return TimedGenerator(generator, self.timings)

    def decoder(self):
        start = time.perf_counter()
        decoder = self.inner.decoder()
        self.timings.decoder_load = time.perf_counter() - start
        self.timings.decoder_info = dict(decoder.fingerprint())
        return TimedDecoder(decoder, self.timings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models on CPU (smoke run, seconds)")
    p.add_argument("--size", choices=("medium", "large"), default="large", help="LM size (default large)")
    p.add_argument("--songs", type=int, default=TARGET_SONGS, help="songs in the album (default 100)")
    p.add_argument("--duration", type=float, default=None,
                   help="max song length in s, which every song reaches (default 150; 2 with --tiny)")
    p.add_argument("--batch-size", type=int, default=8, help="LM songs at once (default 8)")
    p.add_argument("--decoder-batch", type=int, default=GenerationSettings.decoder_batch,
                   help=f"decoder windows at once (default {GenerationSettings.decoder_batch})")
    p.add_argument("--quantize", type=int, choices=(4, 8), default=None,
                   help="quantise the stored LM (default: stored in bf16)")
    p.add_argument("--lm-dtype", choices=LM_DTYPES, default=None,
                   help="LM precision at run time (default: the pipeline's)")
    p.add_argument("--kv-cache", choices=tuple(KV_CACHE_BITS), default=GenerationSettings.kv_cache,
                   help=f"LM cache precision (default {GenerationSettings.kv_cache})")
    p.add_argument("--work", type=Path, default=None,
                   help="keep checkpoints and outputs here and reuse them (default: a temporary folder)")
    p.add_argument("--fixtures", type=Path, default=None, help="golden fixtures folder (tokenizer, decoder shapes)")
    p.add_argument("--device", default=None, help="torch device of the decoder (default: best; cpu with --tiny)")
    phase = p.add_mutually_exclusive_group()
    phase.add_argument("--lm-only", action="store_true", help="stop after the LM phase")
    phase.add_argument("--decoder-only", action="store_true",
                       help="decode tokens already in WORK/out (random ones where missing)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.tiny else REFERENCE_SONG_S
    if args.songs < 1 or args.duration <= 0 or args.batch_size < 1 or args.decoder_batch < 1:
        p.error("--songs, --duration, --batch-size and --decoder-batch must be positive")
    if args.tiny and args.device is None:
        args.device = "cpu"
    return args


def build(args: argparse.Namespace, work: Path) -> tuple[Path, object]:
    """LM checkpoint and runtime folder, reused from `work` when already built the same way."""
    fixtures = find_fixtures(args.fixtures)
    size = "tiny" if args.tiny else args.size
    ckpt = work / f"lm-{size}-{f'q{args.quantize}' if args.quantize else 'bf16'}"
    if not args.decoder_only:
        if (ckpt / "config.json").is_file():
            print(f"reusing LM checkpoint {ckpt}")
        else:
            shutil.rmtree(ckpt, ignore_errors=True)
            start = time.perf_counter()
            write_lm_checkpoint(ckpt, lm_config(size), quantize=args.quantize)
            print(f"wrote LM checkpoint {ckpt} in {time.perf_counter() - start:.1f} s")
    root = work / f"runtime-{'tiny' if args.tiny else 'real'}"
    start = time.perf_counter()
    overrides = TINY_DECODER if args.tiny else None
    runtime, reused = write_runtime(root, fixtures, tiny=args.tiny, decoder_overrides=overrides)
    print(f"{'reusing' if reused else 'wrote'} runtime assets {root} ({time.perf_counter() - start:.1f} s)")
    return ckpt, runtime


def seed_tokens(save_dir: Path, jsonl: Path, duration: float, seed: int = 0) -> int:
    """Random `[3, T]` token records for songs without one, so --decoder-only runs without an LM phase."""
    import numpy as np

    from levo_batch.jobs import load_jobs
    from levo_batch.contracts import FRAME_RATE
    from levo_batch.store import TokenStore

    store = TokenStore(save_dir)
    rng = np.random.default_rng(seed)
    added = 0
    for job in load_jobs(jsonl)[0]:
        if store.load_any(job.idx) is None:
            tokens = rng.integers(0, 16384, (3, int(duration * FRAME_RATE)), dtype=np.int64)
            store.save(job.idx, tokens, {"bench": "random tokens"}, {"seed": 0, "prompt": {}})
            added += 1
    return added


def render(args: argparse.Namespace, work: Path) -> tuple[object, Timings, float]:
    """Run the pipeline on the album; returns its summary, the phase timings and the wall time."""
    import mlx.core as mx

    from levo_batch.stages import DefaultStages, GenerationSettings
    from levo_batch.pipeline import RunOptions, run

    if args.tiny:
        mx.set_default_device(mx.cpu)
    ckpt, runtime = build(args, work)
    jsonl = write_songs(work / f"album-{args.songs}.jsonl", args.songs)
    save_dir = work / "out"
    shutil.rmtree(save_dir / "audios", ignore_errors=True)
    shutil.rmtree(save_dir / "jsonl", ignore_errors=True)
    if args.decoder_only:
        print(f"seeded random tokens for {seed_tokens(save_dir, jsonl, args.duration)} songs")
    else:
        shutil.rmtree(save_dir / "tokens", ignore_errors=True)
    settings = GenerationSettings(ckpt_dir=ckpt, runtime=runtime, batch_size=args.batch_size, kv_cache=args.kv_cache,
                                  decoder_batch=args.decoder_batch, max_duration=args.duration, device=args.device,
                                  lm_dtype=args.lm_dtype)
    args.lm_dtype = settings.lm_load_dtype() or "stored precision"
    stages = TimedStages(DefaultStages(settings))
    opts = RunOptions(jsonl, save_dir, tokens_only=args.lm_only, decode_only=args.decoder_only)
    start = time.perf_counter()
    summary = run(opts, stages)
    wall = time.perf_counter() - start
    if summary.failed:
        raise SystemExit("benchmark run failed:\n" + summary.report())
    return summary, stages.timings, wall


def memory_rows() -> list[tuple[str, str]]:
    import mlx.core as mx
    import torch

    rows = [("MLX device", str(mx.default_device())), ("MLX peak memory", f"{mx.get_peak_memory() / 2**30:.2f} GiB")]
    if torch.cuda.is_available():
        rows += [("torch CUDA device", torch.cuda.get_device_name()),
                 ("torch CUDA peak allocated", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")]
    rows.append(("host peak RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"))
    return rows


def verdict(args: argparse.Namespace, target: str, ok: bool) -> str:
    """Targets are about real-size models on test100-length songs; other runs only show the target."""
    if args.tiny or args.duration != REFERENCE_SONG_S:
        return f"target {target} (for real sizes and --duration {REFERENCE_SONG_S:g})"
    return f"target {target}: {'ok' if ok else 'MISSED'}"


def album_estimate(args: argparse.Namespace, t: Timings, wall: float) -> tuple[float, float]:
    """(seconds for a 100-song album including both model loads, songs/hour at steady state without loads).

    The LM runs songs in waves of `batch` equal-length songs, so its time scales with ceil(songs / batch);
    decoder time and the pipeline's own work (FLAC writing, token store, validation) scale per song.
    """
    n = args.songs
    other_per_song = (wall - t.lm_load - t.lm_generate - t.decoder_load - t.decoder_compute) / n
    lm_per_wave = t.lm_generate / math.ceil(n / min(args.batch_size, n))
    decoder_per_song = t.decoder_compute / max(t.decoder_songs, 1)
    album = (t.lm_load + lm_per_wave * math.ceil(TARGET_SONGS / args.batch_size) + t.decoder_load
             + (decoder_per_song + other_per_song) * TARGET_SONGS)
    steady = t.lm_generate / n + decoder_per_song + other_per_song
    return album, 3600 / steady


def lm_rows(args: argparse.Namespace, t: Timings) -> list[tuple[str, str, str]]:
    n = args.songs
    rows = [
        ("LM phase", f"{t.lm_load + t.lm_generate:.1f} s (load {t.lm_load:.1f} s, generate {t.lm_generate:.1f} s: "
                     f"{t.lm_steps} batched steps)", ""),
        ("LM steps/s", f"{t.lm_steps / t.lm_generate:.1f} ({1000 * t.lm_generate / max(t.lm_steps, 1):.1f} ms/step, "
                       f"{min(args.batch_size, n)} songs per step)", ""),
        ("LM frames/s", f"{t.lm_song_steps / t.lm_generate:.0f} song-steps/s (all songs together)", ""),
        ("LM songs/hour (LM only)", f"{n / t.lm_generate * 3600:.0f}", ""),
    ]
    if n < args.batch_size:
        rows.append(("note", f"{n} songs < batch {args.batch_size}: steps ran at batch {n}; use --songs >= "
                             "--batch-size for representative figures", ""))
    return rows


def decoder_rows(args: argparse.Namespace, summary, t: Timings) -> list[tuple[str, str, str]]:
    per_song = t.decoder_compute / max(t.decoder_songs, 1)
    audio_s = summary.audio_seconds / max(len(summary.done), 1)
    per_reference = per_song * REFERENCE_SONG_S / audio_s
    info = t.decoder_info or {}
    return [
        ("decoder", f"device {info.get('device', '?')}, flow {info.get('dtype', '?')}, "
                    f"VAE {info.get('vae_dtype', '?')}, batch {args.decoder_batch}", ""),
        ("decoder phase", f"{t.decoder_load + t.decoder_compute:.1f} s (load {t.decoder_load:.1f} s, decode "
                          f"{t.decoder_compute:.1f} s: {per_song:.2f} s/song of {audio_s:.1f} s audio)", ""),
        ("decoder s per 150 s of audio", f"{per_reference:.2f} s",
         verdict(args, f"<= {TARGET_DECODER_S} s", per_reference <= TARGET_DECODER_S)),
    ]


def report(args: argparse.Namespace, summary, t: Timings, wall: float) -> str:
    both = not (args.lm_only or args.decoder_only)
    scope = " (LM only)" if args.lm_only else " (decoder only)" if args.decoder_only else ""
    stored = f"{args.quantize}-bit" if args.quantize else "bf16"
    lm = f"{'tiny' if args.tiny else args.size}, {stored} weights run in {args.lm_dtype}"
    rows = [("album", f"{args.songs} songs x {args.duration:g} s (all run to max duration: worst case)", "")]
    rows += [] if args.decoder_only else [("LM", f"{lm}, {args.kv_cache} KV cache, batch {args.batch_size}", ""),
                                          *lm_rows(args, t)]
    rows += [] if args.lm_only else decoder_rows(args, summary, t)
    album, per_hour = album_estimate(args, t, wall)
    rows += [
        ("total wall", f"{wall:.1f} s for {args.songs} songs", ""),
        ("extrapolated 100 songs" + scope, f"{album:.1f} s ({album / 60:.1f} min)",
         verdict(args, f"<= {TARGET_ALBUM_S / 60:.0f} min", album <= TARGET_ALBUM_S) if both else ""),
        ("songs/hour (steady, no loads)" + scope, f"{per_hour:.0f}",
         verdict(args, f">= {TARGET_SONGS_PER_HOUR:.0f}", per_hour >= TARGET_SONGS_PER_HOUR) if both else ""),
    ]
    rows += [(k, v, "") for k, v in memory_rows()]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v:<{vwidth}}  {target}".rstrip() for k, v, target in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="levo-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary, timings, wall = render(args, work)
        print(report(args, summary, timings, wall))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
