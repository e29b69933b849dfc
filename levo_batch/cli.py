"""Command line: `levo-batch generate|merge|convert|download|doctor|evaluate` (generate.sh wraps `generate`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .contracts import DEFAULT_SEED
from .evaluate.cli import add_evaluate
from .gen_types import FLAG_ORDER, GEN_TYPES
from .lm.batch import CPU_SLOTS, MAX_AUTO_SLOTS
from .lm.config import LM_VERSIONS, LMConfig
from .lm.sampling import SamplingParams
from .lowmem import LOW_MEM_THRESHOLDS_GIB
from .stages import (
    GPU_LM_DTYPE,
    KV_CACHE_BITS,
    LM_DTYPES,
    LOW_MEM_DECODER_BATCH,
    UPSTREAM_LOW_MEM_SAMPLING,
    GenerationSettings,
)

EXIT_FAILED_SONGS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULTS = GenerationSettings
"""The settings' defaults are the flags' defaults (read as class attributes)."""

_LOW_MEM_SAMPLING = "temperature {temperature}, top-k {top_k}".format(**UPSTREAM_LOW_MEM_SAMPLING)
_PRECEDENCE = " beats ".join(f"--{flag}" for flag in reversed(FLAG_ORDER))
AUTO_BATCH_CAP = f"at most {MAX_AUTO_SLOTS}; {CPU_SLOTS} on the CPU"
"""How far `--batch-size auto` goes, as `--help` says it (README's option table quotes it)."""
_LOW_MEM_DECODE = f"prompt audio only on the mixed decode, decoder batch {LOW_MEM_DECODER_BATCH}"

UPSTREAM_FLAGS = f"""\
upstream generate.sh flags (accepted anywhere after the three positionals):
  --separate            also write {{idx}}_vocal.flac and {{idx}}_bgm.flac beside the mixed {{idx}}.flac
  --bgm                 accompaniment only (LM told [Pure-Music], vocal row replaced at decoding)
  --vocal               vocals only (bgm row replaced at decoding)
                        several given: like upstream, {_PRECEDENCE}
  --low_mem             force upstream's low-memory mode: its sampling ({_LOW_MEM_SAMPLING}),
                        {_LOW_MEM_DECODE}, LM freed before decoding.
                        Without it the mode is chosen as upstream does (see --no-low-mem)
  --not_use_flash_attn  accepted for compatibility; a no-op (MLX and PyTorch pick their own
                        fused attention kernels on every backend)
"""


def gen_type_of(args: argparse.Namespace) -> str:
    """As upstream's generate.sh: the last flag of `FLAG_ORDER` given wins, whatever its position."""
    gen_type = "mixed"
    for flag in FLAG_ORDER:
        if getattr(args, flag):
            gen_type = flag
    return gen_type


def batch_size_arg(text: str) -> int | None:
    """`--batch-size`: a positive count, or `auto` (None: sized from free device memory)."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of songs or 'auto', got {text!r}")
    return value


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="render every song of a jsonl (what generate.sh runs)",
        description="Render songs from upstream's jsonl: validate all lines, generate tokens with the MLX "
                    "LM (batched, checkpointed, resumable), decode them to 48 kHz FLAC.",
        epilog=UPSTREAM_FLAGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt_dir", type=Path, help="LM checkpoint: official release dir (config.yaml + model.pt) "
                   "or an MLX conversion (config.json + *.safetensors)")
    p.add_argument("input_jsonl", type=Path, help="jobs: one JSON object per line (idx, gt_lyric, "
                   "descriptions, prompt_audio_path, auto_prompt_audio_type)")
    p.add_argument("save_dir", help="output folder: audios/, jsonl/, tokens/")
    for flag in FLAG_ORDER:
        p.add_argument(f"--{flag}", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--low_mem", dest="low_mem", action="store_const", const="on", default="auto",
                   help=argparse.SUPPRESS)
    p.add_argument("--not_use_flash_attn", action="store_true", help=argparse.SUPPRESS)
    g = p.add_argument_group("levo_batch options")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"run seed (default {DEFAULT_SEED}); each song's seed is derived from it and its idx, so a "
                        "song renders the same whatever else is in the file")
    g.add_argument("--batch-size", type=batch_size_arg, default=DEFAULTS.batch_size, metavar="N|auto",
                   help="songs generated at once by the LM (default auto: as many as free device memory holds "
                        f"for the KV caches, {AUTO_BATCH_CAP})")
    g.add_argument("--kv-cache", choices=tuple(KV_CACHE_BITS), default=DEFAULTS.kv_cache,
                   help=f"LM attention cache precision (default {DEFAULTS.kv_cache}: the LM's own, faithful to "
                        "upstream); int8 halves its memory and the bytes read per step (about twice the songs per "
                        "batch, faster at large batches) at a small logit error")
    g.add_argument("--decoder-batch", type=int, default=DEFAULTS.decoder_batch,
                   help=f"decoder windows processed at once (default {DEFAULTS.decoder_batch}; "
                        f"{LOW_MEM_DECODER_BATCH} with --low_mem)")
    g.add_argument("--no-low-mem", dest="low_mem", action="store_const", const="off",
                   help="never use the low-memory mode. Default: automatic like upstream, low-memory when the "
                        "CUDA card has at most its checkpoint folder's threshold ("
                        + ", ".join(f"{k} {v:g} GiB" for k, v in LOW_MEM_THRESHOLDS_GIB.items())
                        + "), normal for other folders and without CUDA. The first log line says which and why")
    g.add_argument("--max-duration", type=float, default=None,
                   help="longest song in seconds, at most the checkpoint's max_dur (default: max_dur, 270 s "
                        "for the v2 releases)")
    g.add_argument("--lm-version", choices=LM_VERSIONS, default=None,
                   help="text conventions of the checkpoint (default: upstream's rule, v1 for folders named "
                        "songgeneration_base, _base_new, _base_full, _large, v2 otherwise; conversions "
                        "record theirs)")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"sampling temperature (default {SamplingParams.temperature})")
    g.add_argument("--top-k", type=int, default=None, help=f"top-k of codebook 0 (default {SamplingParams.top_k})")
    g.add_argument("--cfg-coef", type=float, default=None,
                   help=f"classifier-free guidance (default {LMConfig.cfg_coef}, or the checkpoint's own)")
    g.add_argument("--greedy", action="store_true", help="argmax instead of sampling (debugging, tests)")
    g.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every,
                   help=f"LM steps between mid-song checkpoints (default {DEFAULTS.checkpoint_every})")
    g.add_argument("--tokens-only", action="store_true", help="stop after the LM phase")
    g.add_argument("--decode-only", action="store_true", help="only decode tokens already in SAVE_DIR/tokens")
    g.add_argument("--overwrite", action="store_true",
                   help="regenerate songs whose audio or tokens already exist (default: skip them)")
    g.add_argument("--dry-run", action="store_true",
                   help="validate the jsonl, options, checkpoint and needed assets, print the plan (with what "
                        "would be re-rendered and why), then exit")
    g.add_argument("--strict", action="store_true",
                   help="lyric warnings become errors; finished songs or token records made with other "
                        "settings or inputs are an error (before anything runs) instead of being re-rendered")
    g.add_argument("--runtime-dir", type=Path, default=None,
                   help="upstream runtime assets (default $LEVO_RUNTIME_DIR or ./third_party/SongGeneration)")
    g.add_argument("--decoder-compile", action="store_true",
                   help="torch.compile the decoder's flow transformer: ~30 s to compile, then faster windows; "
                        "worth it for long albums on CUDA (falls back to eager mode if compiling fails)")
    g.add_argument("--lm-dtype", choices=LM_DTYPES, default=None,
                   help=f"LM weight precision (default: {GPU_LM_DTYPE} on a GPU, upstream's and the closest to "
                        "float32; the checkpoint's own on the CPU; quantised checkpoints keep their bits)")
    g.add_argument("--device", default=None, help="torch device for decoder and prompt encoders "
                   "(default: cuda, else mps, else cpu)")
    add_shard_options(p)
    p.set_defaults(func=cmd_generate)


def add_shard_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many GPUs / clusters (one SAVE_DIR shared by every shard)")
    g.add_argument("--shard", metavar="K/N", default=None,
                   help="render only the songs whose position in the jsonl modulo N is K (0 <= K < N); default: "
                        "from a Slurm array task (SLURM_ARRAY_TASK_ID/_MIN/_COUNT) or a Kubernetes Indexed Job "
                        "(JOB_COMPLETION_INDEX with --shards), else every song")
    g.add_argument("--shards", type=int, metavar="N", default=None,
                   help="shard count for a Kubernetes Indexed Job: the Job's completions")
    g.add_argument("--gpus", metavar="all|0,1,...", default=None,
                   help="start one worker per GPU on this host (each sees only its GPU through "
                        "CUDA_VISIBLE_DEVICES), each rendering one shard; one combined progress view, Ctrl-C "
                        "forwarded to every worker, exit code of the worst worker")


def cmd_generate(args: argparse.Namespace) -> int:
    from .errors import LevoError
    from .jobs import JobsError
    from .lowmem import memory_mode
    from .pipeline import RunOptions, run
    from .preflight import PreflightError
    from .progress import log, setup_logging
    from .runtime import RuntimePaths
    from .shards import resolve_shard
    from .stages import DefaultStages

    setup_logging()
    try:
        shard = resolve_shard(args.shard, args.shards)
    except LevoError as exc:
        log(f"error: {exc}")
        return EXIT_USAGE
    if args.gpus is not None:
        from .launch import launch

        return launch(args, shard)
    banner = []
    if not shard.whole:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        banner.append(shard.describe() + (f", CUDA_VISIBLE_DEVICES={devices}" if devices is not None else ""))
    if args.tokens_only and args.decode_only:
        log("error: --tokens-only and --decode-only exclude each other")
        return EXIT_USAGE
    memory = memory_mode(args.low_mem, args.ckpt_dir)
    banner.append(memory.announce())
    opts = RunOptions(input_path=args.input_jsonl, save_dir=Path(args.save_dir), gen_type=gen_type_of(args),
                      seed=args.seed, tokens_only=args.tokens_only, decode_only=args.decode_only,
                      overwrite=args.overwrite, dry_run=args.dry_run, strict=args.strict,
                      save_dir_text=args.save_dir, shard=shard, banner=tuple(banner))
    settings = GenerationSettings(
        ckpt_dir=args.ckpt_dir, runtime=RuntimePaths.resolve(args.runtime_dir),
        low_mem=memory.low_mem, batch_size=args.batch_size, kv_cache=args.kv_cache,
        decoder_batch=args.decoder_batch, max_duration=args.max_duration, temperature=args.temperature,
        top_k=args.top_k, cfg_coef=args.cfg_coef, greedy=args.greedy, checkpoint_every=args.checkpoint_every,
        device=args.device, lm_dtype=args.lm_dtype, decoder_compile=args.decoder_compile,
        lm_version=args.lm_version)
    try:
        summary = run(opts, DefaultStages(settings))
    except (JobsError, PreflightError) as exc:
        log(str(exc))
        return EXIT_USAGE
    except (LevoError, FileNotFoundError) as exc:
        log(f"error: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        from .atomic import STORAGE_ERRNOS, storage_message

        if exc.errno not in STORAGE_ERRNOS:
            raise
        log(f"error: {storage_message(Path(exc.filename or args.save_dir), exc)}")
        return EXIT_USAGE
    except BaseException as exc:
        from .interrupt import StopRequested

        if isinstance(exc, (StopRequested, KeyboardInterrupt)):
            log("interrupted: everything finished so far is saved; resume with the same command")
            return EXIT_INTERRUPTED
        raise
    if not args.dry_run:
        log(summary.report())
    return summary.exit_code


def add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="assemble the output jsonl of shards that share a SAVE_DIR",
                       description="Write SAVE_DIR/jsonl/{input name}.jsonl (every finished song, input order) "
                                   "from the files on disk and each song's provenance record. The last shard to "
                                   "finish does this by itself; run it by hand after a shard was lost or killed.")
    p.add_argument("save_dir", help="the SAVE_DIR every shard wrote to (as typed: it makes wav_path)")
    p.add_argument("input_jsonl", type=Path, help="the jsonl the shards rendered")
    for flag in FLAG_ORDER:
        p.add_argument(f"--{flag}", action="store_true", help=f"the shards ran with --{flag}")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from .jobs import JobsError, load_jobs
    from .outputs import output_jsonl_path
    from .progress import log, setup_logging
    from .results import assemble
    from .shards import live_shards

    setup_logging()
    try:
        jobs, _ = load_jobs(args.input_jsonl)
    except JobsError as exc:
        log(str(exc))
        return EXIT_USAGE
    save_dir = Path(args.save_dir)
    running = [shard.label for shard, _ in live_shards(save_dir)]
    if running:
        log(f"warning: shards still running ({', '.join(running)}): the jsonl lists only the songs finished so far")
    found = assemble(jobs, save_dir, args.input_jsonl, args.save_dir, GEN_TYPES[gen_type_of(args)].stems)
    log(f"{found} of {len(jobs)} songs finished; wrote {output_jsonl_path(save_dir, args.input_jsonl)}"
        if found else f"0 of {len(jobs)} songs finished; nothing written")
    return 0


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an official checkpoint to MLX safetensors",
                       description="Official release dir (config.yaml + model.pt) -> MLX folder (config.json + "
                                   "model*.safetensors, sharded at ~5 GB), optionally quantised.")
    p.add_argument("src", type=Path, help="official checkpoint folder")
    p.add_argument("dst", type=Path, help="new MLX folder")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="weight dtype (default bf16)")
    p.add_argument("--quantize", type=int, choices=(4, 8), default=None, help="quantise linear/embedding "
                   "weights to 4 or 8 bits")
    p.add_argument("--group-size", type=int, default=64, help="quantisation group size (default 64)")
    p.add_argument("--lm-version", choices=LM_VERSIONS, default=None,
                   help="text conventions of the source (default: upstream's folder-name rule, see generate "
                        "--help); recorded in the conversion")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from .lm.convert import convert

    convert(args.src, args.dst, dtype=args.dtype, quantize=args.quantize, group_size=args.group_size,
            version=args.lm_version)
    print(f"wrote {args.dst}")
    return 0


def add_download(sub: argparse._SubParsersAction) -> None:
    from .download import CHECKPOINTS, OFFICIAL_CHECKPOINTS

    p = sub.add_parser("download", help="download upstream's runtime assets and an LM checkpoint",
                       description="Fetch the runtime assets (decoder, VAE, tokenizer, separator) into the "
                                   "runtime folder and, optionally, an LM checkpoint, with huggingface_hub.")
    p.add_argument("--runtime-dir", type=Path, default=None,
                   help="where the runtime assets go (default ./third_party/SongGeneration)")
    p.add_argument("--model", choices=sorted(CHECKPOINTS), default=None, metavar="MODEL",
                   help="also download this LM checkpoint: an official release (" + ", ".join(OFFICIAL_CHECKPOINTS)
                        + ") or a public MLX conversion (mlx-community/SongGeneration-v2-{medium,large}"
                          "[-4bit|-8bit|-bf16|-fp32])")
    p.add_argument("--ckpt-dir", type=Path, default=None,
                   help="where the checkpoint goes (default ./ckpt/songgeneration_<model> for official releases, "
                        "./ckpt/<hub name> for mlx-community ones)")
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    from .download import download
    from .errors import LevoError
    from .runtime import RuntimePaths

    try:
        download(RuntimePaths.resolve(args.runtime_dir), args.model, args.ckpt_dir)
    except LevoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("done")
    return 0


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="list which checkpoint and runtime files a run needs and which are missing",
                       description="Check, without loading anything, that the LM checkpoint and the runtime assets "
                                   "a jsonl needs are present (auto-prompt library only if a song uses it, the "
                                   "separator only if a song has prompt audio, ...). Exit 0: ready; 2: missing.")
    p.add_argument("ckpt_dir", type=Path, help="LM checkpoint folder")
    p.add_argument("input_jsonl", type=Path, nargs="?", default=None,
                   help="the jobs to check for (default: everything any jsonl could need)")
    p.add_argument("--runtime-dir", type=Path, default=None, help="upstream runtime assets (as for generate)")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .assets import EVERYTHING, doctor_lines
    from .jobs import JobsError, load_jobs
    from .preflight import Needs
    from .runtime import RuntimePaths

    needs = EVERYTHING
    if args.input_jsonl is not None:
        try:
            jobs, _ = load_jobs(args.input_jsonl)
        except JobsError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        needs = Needs.of(jobs, tokens_only=False, decode_only=False)
    lines, ok = doctor_lines(args.ckpt_dir, RuntimePaths.resolve(args.runtime_dir), needs)
    print("\n".join(lines))
    print("ready" if ok else "not ready: fetch the MISSING files (commands above), then run again")
    return 0 if ok else EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="levo-batch", description="Batch renderer for LeVo 2 (SongGeneration) with MLX. "
        "Generation types: " + ", ".join(GEN_TYPES) + ".")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate(sub)
    add_merge(sub)
    add_convert(sub)
    add_download(sub)
    add_doctor(sub)
    add_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # --gpus hands the same command line to its workers
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
