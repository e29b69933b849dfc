"""LM decode speed on random weights of the real LeVo 2 sizes (speed depends on shapes and dtypes, not values).

Each row fills `batch` slots with songs already `--position` columns in (prefilled from random history,
so attention spans a mid-song length; a 150-s song averages ~2000), then times `--steps` pipelined decode
steps exactly as `MLXTokenGenerator` runs them (sampling on: CFG, penalty, ban, top-k 5000, Gumbel draw),
and one fresh-song prefill (the 952-token prefix with batch 2). Printed per row: ms per step (all slots
together), steps/s per slot, songs/hour for 4000-step songs from decoding alone and including one prefill
per song (a refill stalls the whole batch), and the peak MLX memory.

    python bench/lm.py --tiny                                   # any machine, seconds
    python bench/lm.py --sizes medium,large --batches 1,4,16 --dtypes bf16,q4 --kv-bits none,8 --steps 200
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from common import LM_SIZES
from mlx.utils import tree_flatten

from levo_batch.lm.batch import SongSlots
from levo_batch.lm.config import LMConfig
from levo_batch.lm.model import LeVoLM
from levo_batch.lm.sampling import SamplingParams

SONG_STEPS = 4000
"""Pattern steps of a 150-s song (3750 frames + the 250-column delay)."""
WARMUP = 5


def build_model(cfg: LMConfig, dtype: str) -> LeVoLM:
    """Random model in `dtype` (fp32, bf16, q4, q8), projections fused as `MLXTokenGenerator` fuses them;
    parameters are created lazily and evaluated one at a time, so the float32 initialisation of a
    5-billion-parameter model is never held whole."""
    model = LeVoLM(cfg)
    model.set_dtype(mx.float32 if dtype == "fp32" else mx.bfloat16)
    if dtype.startswith("q"):
        nn.quantize(model, group_size=64, bits=int(dtype[1:]))
    for _, value in tree_flatten(model.parameters()):
        mx.eval(value)
    return model.fuse_projections()


def time_row(model: LeVoLM, cfg: LMConfig, batch: int, steps: int, position: int, timesteps: int,
             kv_bits: int | None) -> dict:
    slots = SongSlots(model, cfg, SamplingParams(), batch, timesteps, kv_bits=kv_bits)
    dtype = model.transformer.model.norm.weight.dtype
    prefix = mx.random.normal((2, cfg.prefix_len, cfg.dim)).astype(dtype)
    rng = np.random.default_rng(0)
    no_ban, fresh = np.zeros(0, dtype=np.int32), np.full((cfg.code_depth, 1), cfg.special_id, dtype=np.int32)
    for b in range(batch):
        history = rng.integers(0, cfg.code_size, (cfg.code_depth, position + 1)).astype(np.int32)
        history[:, 0] = cfg.special_id
        slots.insert(b, prefix, prefix, no_ban, b, history, np.zeros(cfg.code_depth, dtype=bool))
    for _ in range(WARMUP):
        mx.eval(slots.step().done)
    mx.reset_peak_memory()
    start = time.perf_counter()
    pending = None
    for _ in range(steps):
        current = slots.step()
        if pending is not None:
            pending.done.tolist()
        pending = current
    pending.done.tolist()
    step_s = (time.perf_counter() - start) / steps
    peak = mx.get_peak_memory()
    slots.release(0)
    slots.insert(0, prefix, prefix, no_ban, 0, fresh, np.zeros(cfg.code_depth, dtype=bool))
    start = time.perf_counter()
    mx.eval([a for c in slots.caches1 + slots.caches2 for a in c.state])
    prefill_s = time.perf_counter() - start
    return {
        "ms_step": step_s * 1e3,
        "steps_s": 1 / step_s,
        "songs_h": 3600 * batch / (SONG_STEPS * step_s),
        "songs_h_prefill": 3600 / (SONG_STEPS * step_s / batch + prefill_s),
        "prefill_ms": prefill_s * 1e3,
        "peak_gib": peak / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="medium,large", help=f"comma list of {','.join(LM_SIZES)}")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--dtypes", default="bf16,q4", help="comma list of fp32, bf16, q4, q8")
    ap.add_argument("--steps", type=int, default=100, help="timed decode steps per row")
    ap.add_argument("--position", type=int, default=2000, help="pattern columns already written per song")
    ap.add_argument("--kv-bits", default="none", help="comma list of none, 8 (quantised attention caches; "
                    "needs head_dim >= 32, so not with the tiny size)")
    ap.add_argument("--duration", type=float, default=150.0, help="max song seconds (sizes the KV cache)")
    ap.add_argument("--tiny", action="store_true", help="tiny model, batches 1,4, fp32: a CPU smoke run")
    args = ap.parse_args()
    if args.tiny:
        args.sizes, args.batches, args.dtypes, args.steps, args.position = "tiny", "1,4", "fp32", 20, 100
    print(f"MLX {mx.__version__} on {mx.default_device()} ({mx.device_info().get('device_name', '?')})")
    header = f"{'size':<7}{'dtype':<6}{'kv':<5}{'batch':>6}{'ms/step':>10}{'steps/s':>9}{'songs/h':>9}" \
             f"{'+prefill':>10}{'prefill ms':>11}{'peak GiB':>10}"
    print(header)
    for size in args.sizes.split(","):
        base = LMConfig(**LM_SIZES[size])
        cfg = replace(base, max_dur=args.duration)
        timesteps = int(args.duration * cfg.frame_rate)
        position = min(args.position, timesteps + max(cfg.delays) - args.steps - WARMUP - 2)
        for dtype in args.dtypes.split(","):
            model = build_model(cfg, dtype)
            for kv, batch in ((kv, int(b)) for kv in args.kv_bits.split(",") for b in args.batches.split(",")):
                kv_bits = None if kv == "none" else int(kv)
                try:
                    r = time_row(model, cfg, batch, args.steps, position, timesteps, kv_bits)
                except (RuntimeError, ValueError) as e:  # out of device memory at large batches
                    print(f"{size:<7}{dtype:<6}{kv:<5}{batch:>6}  failed: {e}")
                    continue
                finally:
                    gc.collect()
                    mx.clear_cache()
                print(f"{size:<7}{dtype:<6}{kv:<5}{batch:>6}{r['ms_step']:>10.2f}{r['steps_s']:>9.1f}"
                      f"{r['songs_h']:>9.0f}{r['songs_h_prefill']:>10.0f}{r['prefill_ms']:>11.1f}"
                      f"{r['peak_gib']:>10.2f}", flush=True)
            del model
            gc.collect()
            mx.clear_cache()


if __name__ == "__main__":
    main()
