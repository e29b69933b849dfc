"""Per-kernel device times of one LM decode step, to see what bounds it (run under Nsight Compute on CUDA).

Builds the random real-size model, fills `--batch` slots at pattern column `--column`, warms up, then brackets
exactly one step with cuProfilerStart/Stop, so ncu measures only that step's kernels:

    ncu --clock-control none --graph-profiling node --profile-from-start off --metrics gpu__time_duration.sum \\
        --csv python bench/step_kernels.py --batch 1 > step.csv
    python bench/step_kernels.py --summarise step.csv        # ms per kernel name, largest first
"""

from __future__ import annotations

import argparse
import csv
import ctypes
from collections import defaultdict
from dataclasses import replace

import mlx.core as mx
from common import LM_SIZES
from lm import KV_BITS, build_model, fill_random, place

from levo_batch.lm.batch import SongSlots
from levo_batch.lm.config import LMConfig
from levo_batch.lm.sampling import SamplingParams


def summarise(path: str) -> None:
    totals, counts = defaultdict(float), defaultdict(int)
    with open(path) as f:
        rows = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(rows):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        ns = float(row["Metric Value"].replace(",", "")) * (1e3 if row.get("Metric Unit") == "usecond" else 1)
        name = row["Kernel Name"].split("(")[0][:70]
        totals[name] += ns / 1e6
        counts[name] += 1
    print(f"{'ms':>8}{'count':>7}  kernel   (total {sum(totals.values()):.3f} ms in {sum(counts.values())} kernels)")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{ms:>8.3f}{counts[name]:>7}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--kv", default="bf16", choices=tuple(KV_BITS))
    ap.add_argument("--column", type=int, default=2000)
    ap.add_argument("--summarise", metavar="CSV", help="print an ncu CSV of this script as ms per kernel name")
    args = ap.parse_args()
    if args.summarise:
        return summarise(args.summarise)
    cfg = replace(LMConfig(**LM_SIZES[args.size]), max_dur=150.0)
    model = build_model(cfg, "bf16")
    slots = SongSlots(model, cfg, SamplingParams(), args.batch, int(150 * cfg.frame_rate), kv_bits=KV_BITS[args.kv])
    fill_random(slots)
    place(slots, args.column)
    for _ in range(5):
        mx.eval(slots.step().done)
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuProfilerStart()
    mx.eval(slots.step().done)
    cuda.cuProfilerStop()


if __name__ == "__main__":
    main()
