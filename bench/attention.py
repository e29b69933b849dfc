"""Decode attention on the GPU: the split-K kernel against the portable path, for exactness and speed.

For each case (rows = 2 x songs, v2-large heads 16 x 128, a cache of `--capacity` columns, rows at random
lengths or all at the last column) it runs `cache.attend` (write + attention) through the kernel and through
the portable masked path, checks both against a float32 reference computed from the same cache (relative L2
error; a fresh output each call, so an unwritten element would show), times each (`--steps` synchronised
calls after warm-up) and prints the bytes the rows must read (each row's own keys and values once) over the
measured device copy bandwidth: the bound.

    python bench/attention.py                      # on MLX CUDA; prints a table
"""

from __future__ import annotations

import argparse
import itertools
import time

import mlx.core as mx
import numpy as np

from lm import copy_bandwidth

from levo_batch.lm import decode_attention
from levo_batch.lm.cache import KVCache, QuantizedKVCache, StepContext
from levo_batch.lm.decode_attention import CHUNK

HEADS, DIM = 16, 128


DTYPES = {"bf16": mx.bfloat16, "fp16": mx.float16}


def random_cache(rows: int, capacity: int, kv_bits: int | None, dtype: mx.Dtype):
    shape = (rows, HEADS, capacity, DIM)
    keys, values = (mx.random.normal(shape).astype(dtype) for _ in range(2))
    cache = KVCache(keys, values) if kv_bits is None else QuantizedKVCache.from_float(keys, values, kv_bits)
    mx.eval(cache.state)
    return cache


def float_kv(cache) -> tuple[mx.array, mx.array]:
    if isinstance(cache, KVCache):
        return cache.keys.astype(mx.float32), cache.values.astype(mx.float32)
    return tuple(mx.dequantize(*parts, cache.group_size, cache.bits).astype(mx.float32)
                 for parts in (cache.keys, cache.values))


def reference(q: mx.array, cache, reads: mx.array, scale: float) -> mx.array:
    keys, values = float_kv(cache)
    length = int(reads.max().item()) + 1
    scores = (q.astype(mx.float32) * scale) @ keys[:, :, :length].swapaxes(-1, -2)
    mask = mx.arange(length)[None, None, None, :] <= reads[:, None, None, None]
    return mx.softmax(mx.where(mask, scores, -mx.inf), axis=-1) @ values[:, :, :length]


def timed(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def rel(a: mx.array, b: mx.array) -> float:
    return (mx.linalg.norm(a - b) / mx.linalg.norm(b)).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--songs", default="1,16,32", help="comma list of songs per batch (2 rows each)")
    ap.add_argument("--capacity", type=int, default=5120, help="cache columns (150-s song: 5120)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtypes", default="bf16,fp16", help="comma list of model precisions: bf16, fp16")
    args = ap.parse_args()
    scale = DIM**-0.5
    bandwidth = copy_bandwidth()
    print(f"MLX {mx.__version__} on {mx.default_device()}; copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print(f"{'kv':<10}{'songs':>6}{'lengths':>8}{'kernel err':>11}{'path err':>10}{'kernel ms':>10}{'path ms':>9}"
          f"{'bound ms':>9}{'of bound':>9}")
    rng = np.random.default_rng(0)
    for name, kv_bits in itertools.product(args.dtypes.split(","), (None, 8)):
        dtype = DTYPES[name]
        for songs in (int(s) for s in args.songs.split(",")):
            rows = 2 * songs
            cache = random_cache(rows, args.capacity, kv_bits, dtype)
            per_pos = HEADS * DIM * (2 if kv_bits is None else 1 + 4 / cache.group_size) * 2  # keys + values
            for kind in ("random", "full"):
                last = args.capacity - 2
                reads = rng.integers(0, last, rows) if kind == "random" else np.full(rows, last)
                reads = mx.array(reads.astype(np.int32))
                length = -(-(int(reads.max().item()) + 1) // CHUNK) * CHUNK
                ctx = StepContext(positions=reads, reads=reads, length=length)
                q, k, v = (mx.random.normal((rows, HEADS, 1, DIM)).astype(dtype) for _ in range(3))

                def run(kernel: bool) -> mx.array:
                    decode_attention.ENABLED = kernel
                    out = cache.attend(q, k, v, ctx, scale).astype(mx.float32)
                    mx.eval(out)
                    return out

                got = run(True)
                want = reference(q, cache, reads, scale)
                err, finite = rel(got, want), bool(mx.all(mx.isfinite(got)).item())
                t_kernel = timed(lambda: run(True), args.steps)
                try:
                    err_path, t_path = rel(run(False), want), timed(lambda: run(False), args.steps)
                except RuntimeError:  # MLX CUDA has no 8-bit quantized_matmul for some shapes
                    err_path = t_path = float("nan")
                decode_attention.ENABLED = True
                bound = float(np.sum(np.array(reads) + 1)) * per_pos / bandwidth
                print(f"{name + (' int8' if kv_bits else ''):<10}{songs:>6}{kind:>8}{err:>11.2e}{err_path:>10.2e}"
                      f"{t_kernel * 1e3:>10.3f}{t_path * 1e3:>9.3f}{bound * 1e3:>9.3f}{bound / t_kernel:>9.0%}"
                      + ("" if finite else "  NON-FINITE"), flush=True)
            del cache
            mx.clear_cache()


if __name__ == "__main__":
    main()
