"""Decode attention with per-row lengths (portable path on the CPU, the split-K kernel where MLX CUDA runs) and
cache sizing for `--batch-size auto`."""

import mlx.core as mx
import numpy as np
import pytest

from levo_batch.lm import decode_attention
from levo_batch.lm.batch import CPU_SLOTS, SongSlots, auto_slots, slot_cache_bytes
from levo_batch.lm.cache import KVCache, QuantizedKVCache, StepContext
from levo_batch.lm.config import LMConfig
from levo_batch.lm.model import LeVoLM
from levo_batch.lm.sampling import SamplingParams

ROWS, HEADS, CAPACITY, DIM = 4, 2, 600, 64


def reference(q, keys, values, reads: np.ndarray) -> np.ndarray:
    """float64 attention of each row over its own slots 0..reads[r] (numpy or MLX arrays in)."""
    q, keys, values = (np.array(mx.array(a).astype(mx.float32)).astype(np.float64) for a in (q, keys, values))
    scale = q.shape[-1] ** -0.5
    out = np.zeros(q.shape)
    for r, last in enumerate(reads):
        scores = np.einsum("hd,hkd->hk", q[r, :, 0], keys[r, :, : last + 1]) * scale
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[r, :, 0] = np.einsum("hk,hkd->hd", probs, values[r, :, : last + 1])
    return out


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    keys, values = (rng.standard_normal((ROWS, HEADS, CAPACITY, DIM)).astype(np.float32) for _ in range(2))
    q, k, v = (rng.standard_normal((ROWS, HEADS, 1, DIM)).astype(np.float32) for _ in range(3))
    reads = np.array([0, 5, 257, CAPACITY - 1], dtype=np.int32)  # one slot, a few, past one split, the whole cache
    cache = KVCache(mx.array(keys), mx.array(values))
    keys[np.arange(ROWS), :, reads], values[np.arange(ROWS), :, reads] = k[:, :, 0], v[:, :, 0]
    return cache, (mx.array(q), mx.array(k), mx.array(v)), keys, values, reads, q


def test_rows_attend_only_their_own_prefix():
    """Rows at very different lengths in one call (a refilled slot beside an old one): each row's output is
    attention over exactly its own slots, the token written this step included; stale slots past it never count."""
    cache, (q, k, v), keys, values, reads, q_np = random_case(0)
    ctx = StepContext.build(mx.array(reads), CAPACITY)
    got = np.array(cache.attend(q, k, v, ctx, DIM**-0.5))
    np.testing.assert_allclose(got, reference(q_np, keys, values, reads), atol=2e-6, rtol=0)


def test_idle_rows_read_a_single_slot():
    """An idle slot (no song) attends slot 0 only; active rows are unchanged."""
    positions = mx.array([7, 300, 9, 450], dtype=mx.int32)
    ctx = StepContext.build(positions, 512, mx.array([True, False, True, False]))
    assert ctx.reads.tolist() == [7, 0, 9, 0]
    assert ctx.positions.tolist() == [7, 300, 9, 450]
    assert np.array(ctx.mask).sum(axis=-1).ravel().tolist() == [8, 1, 10, 1]


@pytest.mark.skipif(not decode_attention.applies(128, mx.bfloat16), reason="needs MLX CUDA (the kernel's backend)")
@pytest.mark.parametrize("kv_bits", [None, 8])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bf16", "fp16"])
def test_cuda_kernel_matches_float64_attention(kv_bits, dtype):
    """Split-K kernel vs float64 on the same (16-bit or dequantised 8-bit) cache of a bf16 or fp16 model:
    relative L2 error within bf16 output rounding (measured 1.7e-3 bf16 / 2.8e-3 8-bit on an H200; the
    portable path: ~6e-3)."""
    rng = np.random.default_rng(1)
    rows, heads, capacity, dim = 6, 16, 1280, 128
    keys, values = (mx.array(rng.standard_normal((rows, heads, capacity, dim)).astype(np.float32)).astype(dtype)
                    for _ in range(2))
    q, k, v = (mx.array(rng.standard_normal((rows, heads, 1, dim)).astype(np.float32)).astype(dtype)
               for _ in range(3))
    reads = np.array([0, 1, 255, 256, 700, capacity - 1], dtype=np.int32)
    cache = KVCache(keys, values) if kv_bits is None else QuantizedKVCache.from_float(keys, values, kv_bits)
    out = cache.attend(q, k, v, StepContext.build(mx.array(reads), capacity), dim**-0.5)
    assert out.dtype == dtype
    got = np.array(out.astype(mx.float32))
    if kv_bits is None:
        keys, values = cache.keys, cache.values
    else:
        keys, values = (mx.dequantize(*parts, cache.group_size, kv_bits) for parts in (cache.keys, cache.values))
    want = reference(q, keys, values, reads)
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 5e-3


@pytest.mark.parametrize("kv_bits", [None, 8])
def test_slot_cache_bytes_match_the_allocated_caches(kv_bits):
    """`--batch-size auto` divides free memory by this figure, so it must be what `SongSlots` allocates."""
    cfg = LMConfig(dim=64, intermediate_size=128, num_heads=2, num_layers=2, num_layers_sub=1, lyrics_vocab=300,
                   description_vocab=300)
    model = LeVoLM(cfg)
    slots = SongSlots(model, cfg, SamplingParams(), 3, 40, kv_bits=kv_bits)
    allocated = sum(a.nbytes for c in slots.caches1 + slots.caches2 for a in c.state)
    assert slot_cache_bytes(cfg, 40, kv_bits, mx.float32) * 3 == allocated


@pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the CPU rule")
def test_auto_slots_on_the_cpu_is_the_cpu_default():
    cfg = LMConfig(dim=64, intermediate_size=128, num_heads=2, num_layers=2, num_layers_sub=1)
    assert auto_slots(cfg, 3750, None, mx.float32) == CPU_SLOTS
