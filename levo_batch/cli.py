"""Command line: `levo-batch generate|convert|download|evaluate` (generate.sh is a thin wrapper over `generate`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .evaluate.cli import add_evaluate
from .stages import GEN_TYPES

EXIT_FAILED_SONGS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

UPSTREAM_FLAGS = """\
upstream generate.sh flags (accepted anywhere after the three positionals):
  --separate            also write {idx}_vocal.flac and {idx}_bgm.flac beside the mixed {idx}.flac
  --bgm                 accompaniment only (LM told [Pure-Music], vocal row replaced at decoding)
  --vocal               vocals only (bgm row replaced at decoding)
                        several given: like upstream, --vocal beats --bgm beats --separate
  --low_mem             upstream's low-memory mode: its sampling (temperature 0.9, top-k 50), prompt
                        audio only on the mixed decode, decoder batch 1, LM freed before decoding
  --not_use_flash_attn  accepted for compatibility; a no-op (MLX and PyTorch pick their own
                        fused attention kernels on every backend)
"""


def gen_type_of(args: argparse.Namespace) -> str:
    """Upstream's generate.sh checks the flags in this order, so the last match wins regardless of position."""
    gen_type = "mixed"
    for flag in ("separate", "bgm", "vocal"):
        if getattr(args, flag):
            gen_type = flag
    return gen_type


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
    for flag in ("separate", "bgm", "vocal"):
        p.add_argument(f"--{flag}", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--low_mem", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--not_use_flash_attn", action="store_true", help=argparse.SUPPRESS)
    g = p.add_argument_group("levo_batch options")
    g.add_argument("--seed", type=int, default=0,
                   help="run seed (default 0); each song's seed is derived from it and its idx, so a song "
                        "renders the same whatever else is in the file")
    g.add_argument("--batch-size", type=int, default=8, help="songs generated at once by the LM (default 8)")
    g.add_argument("--decoder-batch", type=int, default=4,
                   help="decoder windows processed at once (default 4; 1 with --low_mem)")
    g.add_argument("--max-duration", type=float, default=None,
                   help="longest song in seconds (default: the checkpoint's max_dur)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0.8)")
    g.add_argument("--top-k", type=int, default=None, help="top-k of codebook 0 (default 5000)")
    g.add_argument("--cfg-coef", type=float, default=None, help="classifier-free guidance (default 1.5)")
    g.add_argument("--greedy", action="store_true", help="argmax instead of sampling (debugging, tests)")
    g.add_argument("--checkpoint-every", type=int, default=100,
                   help="LM steps between mid-song checkpoints (default 100)")
    g.add_argument("--tokens-only", action="store_true", help="stop after the LM phase")
    g.add_argument("--decode-only", action="store_true", help="only decode tokens already in SAVE_DIR/tokens")
    g.add_argument("--overwrite", action="store_true",
                   help="regenerate songs whose audio or tokens already exist (default: skip them)")
    g.add_argument("--dry-run", action="store_true", help="validate the jsonl and print the plan, then exit")
    g.add_argument("--strict", action="store_true",
                   help="lyric warnings become errors; stale token records are an error instead of "
                        "being regenerated")
    g.add_argument("--runtime-dir", type=Path, default=None,
                   help="upstream runtime assets (default $LEVO_RUNTIME_DIR or ./third_party/SongGeneration)")
    g.add_argument("--decoder-compile", action="store_true",
                   help="torch.compile the decoder's flow transformer: ~30 s to compile, then faster windows; "
                        "worth it for long albums on CUDA (falls back to eager mode if compiling fails)")
    g.add_argument("--lm-dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="LM weight precision (default: bf16 on a GPU, the checkpoint's own on the CPU; "
                        "quantised checkpoints keep their bits)")
    g.add_argument("--device", default=None, help="torch device for decoder and prompt encoders "
                   "(default: cuda, else mps, else cpu)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from .backends import DefaultStages, GenerationSettings
    from .errors import LevoError
    from .jobs import JobsError
    from .pipeline import RunOptions, run
    from .progress import log, setup_logging
    from .runtime import RuntimePaths

    setup_logging()
    if args.tokens_only and args.decode_only:
        log("error: --tokens-only and --decode-only exclude each other")
        return EXIT_USAGE
    if not args.decode_only and not args.dry_run and not args.ckpt_dir.is_dir():
        log(f"error: checkpoint folder {args.ckpt_dir} not found (expected config.yaml + model.pt, or an "
            f"MLX conversion with config.json + *.safetensors)")
        return EXIT_USAGE
    gen_type = gen_type_of(args)
    opts = RunOptions(args.input_jsonl, Path(args.save_dir), gen_type, args.seed, args.tokens_only,
                      args.decode_only, args.overwrite, args.dry_run, args.strict,
                      save_dir_text=args.save_dir)
    settings = GenerationSettings(
        ckpt_dir=args.ckpt_dir, runtime=RuntimePaths.resolve(args.runtime_dir), gen_type=gen_type,
        low_mem=args.low_mem, batch_size=args.batch_size, decoder_batch=args.decoder_batch,
        max_duration=args.max_duration, temperature=args.temperature, top_k=args.top_k,
        cfg_coef=args.cfg_coef, greedy=args.greedy, checkpoint_every=args.checkpoint_every,
        device=args.device, lm_dtype=args.lm_dtype,
        decoder_compile=args.decoder_compile)
    try:
        summary = run(opts, DefaultStages(settings))
    except JobsError as exc:
        log(str(exc))
        return EXIT_USAGE
    except (LevoError, FileNotFoundError) as exc:
        log(f"error: {exc}")
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
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from .lm.convert import convert

    convert(args.src, args.dst, dtype=args.dtype, quantize=args.quantize, group_size=args.group_size)
    print(f"wrote {args.dst}")
    return 0


def add_download(sub: argparse._SubParsersAction) -> None:
    from .download import CHECKPOINTS

    p = sub.add_parser("download", help="download upstream's runtime assets and an LM checkpoint",
                       description="Fetch the runtime assets (decoder, VAE, tokenizer, separator) into the "
                                   "runtime folder and, optionally, an LM checkpoint, with huggingface_hub.")
    p.add_argument("--runtime-dir", type=Path, default=None,
                   help="where the runtime assets go (default ./third_party/SongGeneration)")
    p.add_argument("--model", choices=sorted(CHECKPOINTS), default=None,
                   help="also download this LM checkpoint")
    p.add_argument("--ckpt-dir", type=Path, default=None,
                   help="where the checkpoint goes (default ./ckpt/<model>)")
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    from .download import download
    from .runtime import RuntimePaths

    download(RuntimePaths.resolve(args.runtime_dir), args.model, args.ckpt_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="levo-batch", description="Batch renderer for LeVo 2 (SongGeneration) with MLX. "
        "Generation types: " + ", ".join(GEN_TYPES) + ".")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate(sub)
    add_convert(sub)
    add_download(sub)
    add_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
