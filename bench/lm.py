"""LM decode speed on random weights of the real LeVo 2 sizes (speed depends on shapes and dtypes, not values).

Each row fills `batch` slots with songs that started together and times the pipelined decode steps exactly as
`MLXTokenGenerator` runs them (sampling on: CFG, penalty, ban, top-k 5000, Gumbel draw) at `--samples`
positions spread evenly over a `--duration` song (midpoints of equal spans of its pattern steps), so the
mean is the song-averaged step time a user gets: attention spans grow from the 952-token prefix to the
whole song. Caches hold random values (speed does not depend on them), so no position needs a prefill; one
fresh-song prefill (batch 2) is timed separately.

Printed per row: ms per step at each sampled position and their mean (all slots together), songs/hour from
decoding alone and with one prefill per song (a refill stalls the batch), the bandwidth bound (weights plus
every row's own keys and values read once per step, averaged over the song, over the measured device copy
bandwidth) and how far the step is from it, and the peak MLX memory.

    python bench/lm.py --tiny                                         # any machine, seconds
    python bench/lm.py --sizes large --batches 1,16,32 --kv bf16,int8 --steps 30
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

from levo_batch.stages import KV_CACHE_BITS
from levo_batch.lm import decode_attention
from levo_batch.lm.batch import SongSlots
from levo_batch.lm.config import LMConfig
from levo_batch.lm.model import LeVoLM
from levo_batch.lm.pattern import num_columns
from levo_batch.lm.sampling import SamplingParams

WARMUP = 3


def build_model(cfg: LMConfig, dtype: str) -> LeVoLM:
    """Random model in `dtype` (fp32, fp16, bf16, q4, q8; quantised ones keep bf16 scales), projections fused as
    `MLXTokenGenerator` fuses them; parameters are created lazily and evaluated one at a time, so the float32
    initialisation of a 5-billion-parameter model is never held whole."""
    model = LeVoLM(cfg)
    model.set_dtype({"fp32": mx.float32, "fp16": mx.float16}.get(dtype, mx.bfloat16))
    if dtype.startswith("q"):
        nn.quantize(model, group_size=64, bits=int(dtype[1:]))
    for _, value in tree_flatten(model.parameters()):
        mx.eval(value)
    return model.fuse_projections()


def copy_bandwidth() -> float:
    """Bytes per second of a 4-GiB device copy (read + write counted): the memory-bound ceiling. Through
    torch's copy on CUDA (MLX's elementwise kernels measured ~30 % below it on an H200), else MLX's."""
    try:
        import torch

        if torch.cuda.is_available():
            src = torch.empty(2**31, dtype=torch.uint8, device="cuda").random_()
            dst = torch.empty_like(src)
            for _ in range(3):
                dst.copy_(src)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                dst.copy_(src)
            stop.record()
            stop.synchronize()
            seconds = start.elapsed_time(stop) / 1e3
            del src, dst
            torch.cuda.empty_cache()
            return 2 * 2**31 * 10 / seconds
    except ImportError:
        pass
    a = mx.random.uniform(shape=(2**18, 2**13)).astype(mx.bfloat16)
    mx.eval(a)
    for _ in range(3):
        mx.eval(a + 1)
    start, n = time.perf_counter(), 10
    for _ in range(n):
        mx.eval(a + 1)
    return 2 * a.nbytes * n / (time.perf_counter() - start)


def fill_random(slots: SongSlots) -> None:
    """Random cache contents, array by array (never zeros: they can time faster than real data)."""
    for cache in slots.caches1 + slots.caches2:
        state = [mx.random.randint(0, 2**31 - 1, a.shape).astype(mx.uint32) if a.dtype == mx.uint32 else
                 (mx.random.normal(a.shape) * (0.02 if a.shape[-1] < 64 else 1.0)).astype(a.dtype)
                 for a in cache.state]
        mx.eval(state)
        rebuilt = cache.rebuilder()(state)
        cache.__dict__.update(rebuilt.__dict__)


def place(slots: SongSlots, column: int) -> None:
    """Every slot holds a running song at pattern column `column` (the cache is already full of keys)."""
    n = slots.slots
    slots.owners = list(range(n))
    slots.host_col = [column] * n
    slots.col = mx.full((n,), column, dtype=mx.int32)
    slots.active = mx.ones((n,), dtype=mx.bool_)
    slots.ended = mx.zeros_like(slots.ended)
    mx.eval(slots.col, slots.active, slots.ended)


def time_steps(slots: SongSlots, steps: int) -> float:
    for _ in range(WARMUP):
        mx.eval(slots.step().done)
    start = time.perf_counter()
    pending = None
    for _ in range(steps):
        current = slots.step()
        if pending is not None:
            pending.done.tolist()
        pending = current
    pending.done.tolist()
    return (time.perf_counter() - start) / steps


def kv_bytes_per_position(cfg: LMConfig, kv_bits: int | None, itemsize: int) -> float:
    """Bytes of keys plus values of one position of one row over all layers."""
    per_value = itemsize if kv_bits is None else 1 + 2 * itemsize / 64
    return 2 * (cfg.num_layers + cfg.num_layers_sub) * cfg.dim * per_value


def time_row(model: LeVoLM, cfg: LMConfig, batch: int, steps: int, samples: int, timesteps: int,
             kv_bits: int | None, bandwidth: float) -> dict:
    slots = SongSlots(model, cfg, SamplingParams(), batch, timesteps, kv_bits=kv_bits)
    fill_random(slots)
    song_steps = num_columns(timesteps, cfg.delays) - 1
    columns = [int((i + 0.5) * song_steps / samples) for i in range(samples)]
    columns = [min(c, song_steps - steps - WARMUP - 1) for c in columns]
    mx.reset_peak_memory()
    per_column = []
    for column in columns:
        place(slots, column)
        per_column.append(time_steps(slots, steps))
    step_s = float(np.mean(per_column))
    peak = mx.get_peak_memory()
    dtype = model.transformer.model.norm.weight.dtype
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    mean_len = cfg.prefix_len + np.mean([c + 1 + steps / 2 for c in columns])
    kv = 2 * batch * mean_len * kv_bytes_per_position(cfg, kv_bits, dtype.size)
    bound_s = (weights + kv) / bandwidth
    prefix = mx.random.normal((2, cfg.prefix_len, cfg.dim)).astype(dtype)
    depth = cfg.code_depth
    slots.release(0)
    fresh = np.full((depth, 1), cfg.special_id, dtype=np.int32)
    start = time.perf_counter()
    slots.insert(0, prefix, prefix, np.zeros(0, dtype=np.int32), 0, fresh, np.zeros(depth, dtype=bool))
    mx.eval([a for c in slots.caches1 + slots.caches2 for a in c.state])
    prefill_s = time.perf_counter() - start
    return {
        "columns": columns,
        "per_column_ms": [t * 1e3 for t in per_column],
        "ms_step": step_s * 1e3,
        "songs_h": 3600 * batch / (song_steps * step_s),
        "songs_h_prefill": 3600 / (song_steps * step_s / batch + prefill_s),
        "prefill_ms": prefill_s * 1e3,
        "bound_ms": bound_s * 1e3,
        "peak_gib": peak / 2**30,
    }


def logit_errors(model: LeVoLM, cfg: LMConfig, timesteps: int, steps: int = 4) -> dict:
    """Relative RMS error of the processed logits of 2 songs over `steps` greedy steps from a 200-column history,
    against the model-precision caches read by the portable path: those caches through the kernel, 8-bit caches
    through it.
    Only the first step compares like with like: once a near-tie flips a greedy choice (on an H200 with random
    weights, already at step 2), the songs differ and so do all later logits."""
    rng = np.random.default_rng(1)
    dtype = model.transformer.model.norm.weight.dtype
    prefixes = [mx.array(rng.standard_normal((2, cfg.prefix_len, cfg.dim)).astype(np.float32)).astype(dtype)
                for _ in range(2)]
    histories = [rng.integers(0, cfg.code_size, (cfg.code_depth, 201)).astype(np.int32) for _ in range(2)]

    def run(kv_bits: int | None, kernel: bool) -> np.ndarray:
        decode_attention.ENABLED = kernel
        slots = SongSlots(model, cfg, SamplingParams(greedy=True), 2, timesteps, keep_logits=True, kv_bits=kv_bits)
        for b in range(2):
            slots.insert(b, prefixes[b], prefixes[b], np.zeros(0, dtype=np.int32), b, histories[b],
                         np.zeros(cfg.code_depth, dtype=bool))
        return np.stack([np.array(slots.step().logits.astype(mx.float32)) for _ in range(steps)])

    want = run(None, False)
    errors = {}
    for name, kv_bits in (("16-bit kernel", None), ("int8 kernel", 8)):
        got = run(kv_bits, True)
        errors[name] = [float(np.sqrt(((got[i] - want[i]) ** 2).mean() / (want[i] ** 2).mean())) for i in range(steps)]
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="large", help=f"comma list of {','.join(LM_SIZES)}")
    ap.add_argument("--batches", default="1,16,32")
    ap.add_argument("--dtypes", default="bf16", help="comma list of fp32, fp16, bf16, q4, q8 (model weights)")
    ap.add_argument("--kv", default="auto,int8", help="comma list of auto (the weights' precision), int8 "
                    "(attention caches; int8 needs "
                    "head_dim >= 32, so not with the tiny size)")
    ap.add_argument("--steps", type=int, default=30, help="timed decode steps per sampled position")
    ap.add_argument("--samples", type=int, default=4, help="positions sampled over the song")
    ap.add_argument("--duration", type=float, default=150.0, help="song seconds (sizes the KV cache)")
    ap.add_argument("--attention", choices=("kernel", "portable"), default="kernel",
                    help="decode attention on CUDA: the split-K kernel or the portable masked path")
    ap.add_argument("--kv-error", action="store_true", help="first print the logit error of the kernel and of "
                    "8-bit caches against 16-bit caches on the portable path (MLX CUDA, 16-bit weights)")
    ap.add_argument("--tiny", action="store_true", help="tiny model, batches 1,4, fp32: a CPU smoke run")
    args = ap.parse_args()
    if args.tiny:
        args.sizes, args.batches, args.dtypes, args.kv, args.steps, args.samples = "tiny", "1,4", "fp32", "auto", 5, 2
    decode_attention.ENABLED = args.attention == "kernel"
    bandwidth = copy_bandwidth()
    print(f"MLX {mx.__version__} on {mx.default_device()} ({mx.device_info().get('device_name', '?')}); "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; attention: {args.attention}")
    print(f"{'size':<7}{'dtype':<6}{'kv':<5}{'batch':>6}{'ms/step at columns':>34}{'mean':>8}{'songs/h':>9}"
          f"{'+prefill':>9}{'prefill ms':>11}{'bound ms':>9}{'x bound':>8}{'peak GiB':>9}")
    for size in args.sizes.split(","):
        cfg = replace(LMConfig(**LM_SIZES[size]), max_dur=args.duration)
        timesteps = int(args.duration * cfg.frame_rate)
        for dtype in args.dtypes.split(","):
            model = build_model(cfg, dtype)
            if args.kv_error:
                for name, errs in logit_errors(model, cfg, timesteps).items():
                    print(f"{size} {dtype}: {name} vs 16-bit portable, rel. RMS logit error per step: "
                          + " ".join(f"{e:.2e}" for e in errs), flush=True)
                decode_attention.ENABLED = args.attention == "kernel"
            for kv, batch in ((kv, int(b)) for kv in args.kv.split(",") for b in args.batches.split(",")):
                try:
                    r = time_row(model, cfg, batch, args.steps, args.samples, timesteps, KV_CACHE_BITS[kv], bandwidth)
                except (RuntimeError, ValueError) as e:  # out of device memory at large batches
                    print(f"{size:<7}{dtype:<6}{kv:<5}{batch:>6}  failed: {e}", flush=True)
                    continue
                finally:
                    gc.collect()
                    mx.clear_cache()
                at = " ".join(f"{c}:{t:.1f}" for c, t in zip(r["columns"], r["per_column_ms"]))
                print(f"{size:<7}{dtype:<6}{kv:<5}{batch:>6} {at:>33}{r['ms_step']:>8.2f}{r['songs_h']:>9.0f}"
                      f"{r['songs_h_prefill']:>9.0f}{r['prefill_ms']:>11.1f}{r['bound_ms']:>9.2f}"
                      f"{r['ms_step'] / r['bound_ms']:>8.1f}{r['peak_gib']:>9.2f}", flush=True)
            del model
            gc.collect()
            mx.clear_cache()


if __name__ == "__main__":
    main()
