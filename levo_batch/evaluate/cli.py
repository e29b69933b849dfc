"""`levo-batch evaluate SAVE_DIR [INPUT.jsonl]`: argument parsing; the work is in `run`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .asr import DEFAULT_ASR_MODEL

EXIT_USAGE = 2


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a finished render: lyric accuracy (PER), aesthetics, loudness; writes a report",
        description="Score every song of a render and write SAVE_DIR/eval/report.json, report.csv and "
                    "report.html: PER/WER/CER of a Whisper transcript against the lyrics (the vocal stem when "
                    "the render has one), Audiobox Aesthetics (CE, CU, PC, PQ), duration, loudness, clipping, "
                    "silence and LM time, with means and 95 % confidence intervals. Needs "
                    "pip install 'levo-batch[eval]'; models are downloaded on first use.")
    p.add_argument("save_dir", type=Path, help="the render's output folder (audios/, jsonl/)")
    p.add_argument("input_jsonl", type=Path, nargs="?", default=None,
                   help="the jsonl the render was made from (default: the only result jsonl in SAVE_DIR/jsonl)")
    p.add_argument("--asr", default=DEFAULT_ASR_MODEL, metavar="MODEL",
                   help=f"faster-whisper model: a size (default {DEFAULT_ASR_MODEL}), a hub id, a local CTranslate2 "
                        "folder, or 'none' to skip lyric accuracy")
    p.add_argument("--no-aesthetics", action="store_true", help="skip the Audiobox Aesthetics scores")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or mps (default: cuda, else mps, else cpu; Whisper runs on cuda or cpu)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..errors import LevoError
    from ..progress import log, setup_logging
    from .run import EvalOptions, evaluate

    setup_logging()
    opts = EvalOptions(args.save_dir, args.input_jsonl, None if args.asr == "none" else args.asr,
                       not args.no_aesthetics, args.device)
    try:
        report, out = evaluate(opts)
    except LevoError as exc:
        log(f"error: {exc}")
        return EXIT_USAGE
    summary = report.summary()
    for key in ("per", "wer", "cer", "CE", "CU", "PC", "PQ", "lufs"):
        s = summary[key]
        if s["n"]:
            ci = f" (95 % CI {s['ci95_low']:.4g} to {s['ci95_high']:.4g})" if s["ci95_low"] is not None else ""
            log(f"{key}: mean {s['mean']:.4g}{ci} over {s['n']} songs")
    if report.missing:
        log(f"without audio (not scored): {', '.join(report.missing)}")
    log(f"wrote {out / 'report.json'}, report.csv, report.html")
    return 0
