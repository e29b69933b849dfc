"""Preallocated attention caches for batched decoding with per-row positions.

Songs in one batch are at different steps (a finished song's slot is refilled by a new one), so each row
writes its keys at its own position instead of a shared offset. The buffers are allocated once for the
longest song and written in place (`put_along_axis` on an array nobody else holds lets MLX reuse the
buffer), so a step never concatenates or copies the cache.

Each row attends only its own prefix `[0, reads[r]]` (`StepContext.reads`: its position, or 0 for an idle
slot, which so costs next to nothing). On MLX CUDA a split-K kernel does this in one pass over each row's
keys and values (`levo_batch.lm.decode_attention`), for 16-bit (fp16, bf16) and 8-bit caches alike.
Elsewhere every row attends the same cache prefix (`StepContext.length`, the furthest row's position rounded
up) with its later slots masked: on Metal MLX's fused decode kernel takes the mask, on the CPU (and for
float32 models on CUDA) the attention is written out as two matmuls around a masked softmax with the score
scale folded into the masking kernel.

At large batches decoding is bound by reading keys and values (LeVo 2 has no grouped KV heads: about
1.2 GB per row per step mid-song for v2-large in bf16), so `QuantizedKVCache` stores them in 8 bits with
per-group scales, roughly halving that traffic and the memory, at a small numerical cost (4 bits was tried
and moves the logits far too much).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import mlx.core as mx

from levo_batch.lm import decode_attention


@dataclass
class StepContext:
    """What every attention layer of one decoding step shares.

    `positions` [R] is each row's position of the fed token (its RoPE offset and cache slot); `reads` [R] the
    last cache slot each row attends (its position, 0 for an idle row); `length` bounds how much of the cache
    any row attends (a bucket >= max position + 1, so the shapes repeat across steps).
    """

    positions: mx.array
    reads: mx.array
    length: int

    @classmethod
    def build(cls, positions: mx.array, length: int, active: mx.array | None = None) -> "StepContext":
        reads = positions if active is None else mx.where(active, positions, 0)
        return cls(positions=positions, reads=reads, length=length)

    @cached_property
    def mask(self) -> mx.array:
        """[R, 1, 1, length]: hides each row's slots after `reads` (stale keys of an earlier song)."""
        return mx.arange(self.length)[None, None, None, :] <= self.reads[:, None, None, None]


def masked_fused_decode() -> bool:
    """Whether MLX's attention decodes with an array mask in one kernel: on Metal it does (and the CPU has no
    launches to save), on CUDA it falls back to separate scale, matmul, mask, softmax and matmul ops."""
    return not (mx.default_device() == mx.gpu and mx.cuda.is_available())


def _masked_probs(scores: mx.array, mask: mx.array, scale: float) -> mx.array:
    """Raw scores -> attention weights in the scores' dtype; scale and mask compile into one kernel, and the
    precise softmax accumulates in float32 without a cast kernel around it."""
    return mx.softmax(mx.where(mask, scores * scale, -mx.inf), axis=-1, precise=True)


def _write(buffer: mx.array, value: mx.array, ctx: StepContext) -> mx.array:
    return mx.put_along_axis(buffer, ctx.positions[:, None, None, None], value.astype(buffer.dtype), axis=2)


class KVCache:
    """Keys and values of one attention layer, `[rows, heads, capacity, head_dim]`."""

    def __init__(self, keys: mx.array, values: mx.array):
        self.keys, self.values = keys, values

    @classmethod
    def zeros(cls, rows: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype) -> "KVCache":
        shape = (rows, heads, capacity, head_dim)
        return cls(mx.zeros(shape, dtype=dtype), mx.zeros(shape, dtype=dtype))

    @property
    def state(self) -> list[mx.array]:
        return [self.keys, self.values]

    def rebuilder(self) -> Callable[[list[mx.array]], "KVCache"]:
        """Makes a cache like this one from a `state` list; holds no arrays (compiled steps keep it)."""
        return lambda state: KVCache(*state)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, ctx: StepContext, scale: float) -> mx.array:
        """Store one token per row at its own position, then attend over the cache prefix."""
        self.keys, self.values = _write(self.keys, k, ctx), _write(self.values, v, ctx)
        if decode_attention.applies(q.shape[-1], self.keys.dtype):
            return decode_attention.cuda_decode_attention(q, self.state, ctx.reads, ctx.length, scale)
        keys, values = self.keys[:, :, : ctx.length], self.values[:, :, : ctx.length]
        if masked_fused_decode():
            return mx.fast.scaled_dot_product_attention(q, keys, values, scale=scale, mask=ctx.mask)
        return _masked_probs(q @ keys.swapaxes(-1, -2), ctx.mask, scale) @ values

    def insert(self, rows: slice, k: mx.array, v: mx.array) -> None:
        """Place a prefilled sequence (positions 0..n-1) into some rows, e.g. a new song's slot."""
        n = k.shape[2]
        self.keys[rows, :, :n] = k.astype(self.keys.dtype)
        self.values[rows, :, :n] = v.astype(self.values.dtype)


class QuantizedKVCache:
    """`KVCache` with keys and values quantised along head_dim (`mx.quantize` layout: packed, scales, biases)."""

    def __init__(self, keys: list[mx.array], values: list[mx.array], bits: int, group_size: int):
        self.keys, self.values, self.bits, self.group_size = keys, values, bits, group_size

    @classmethod
    def zeros(cls, rows: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype, bits: int,
              group_size: int) -> "QuantizedKVCache":
        def make():
            lead = (rows, heads, capacity)
            return [mx.zeros((*lead, head_dim * bits // 32), dtype=mx.uint32),
                    mx.zeros((*lead, head_dim // group_size), dtype=dtype),
                    mx.zeros((*lead, head_dim // group_size), dtype=dtype)]

        return cls(make(), make(), bits, group_size)

    @classmethod
    def from_float(cls, keys: mx.array, values: mx.array, bits: int) -> "QuantizedKVCache":
        """A cache holding `keys` and `values` `[rows, heads, capacity, head_dim]` quantised."""
        group = kv_group_size(keys.shape[-1], bits)
        return cls(list(mx.quantize(keys, group, bits)), list(mx.quantize(values, group, bits)), bits, group)

    @property
    def state(self) -> list[mx.array]:
        return [*self.keys, *self.values]

    def rebuilder(self) -> Callable[[list[mx.array]], "QuantizedKVCache"]:
        bits, group_size = self.bits, self.group_size
        return lambda state: QuantizedKVCache(list(state[:3]), list(state[3:]), bits, group_size)

    def _quantize(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        return mx.quantize(x, group_size=self.group_size, bits=self.bits)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, ctx: StepContext, scale: float) -> mx.array:
        self.keys = [_write(b, x, ctx) for b, x in zip(self.keys, self._quantize(k))]
        self.values = [_write(b, x, ctx) for b, x in zip(self.values, self._quantize(v))]
        if decode_attention.applies(q.shape[-1], q.dtype):
            return decode_attention.cuda_decode_attention(q, self.state, ctx.reads, ctx.length, scale,
                                                          group_size=self.group_size)
        quant = dict(group_size=self.group_size, bits=self.bits)
        keys = [a[:, :, : ctx.length] for a in self.keys]
        values = [a[:, :, : ctx.length] for a in self.values]
        probs = _masked_probs(mx.quantized_matmul(q, *keys, transpose=True, **quant), ctx.mask, scale)
        return mx.quantized_matmul(probs, *values, transpose=False, **quant)

    def insert(self, rows: slice, k: mx.array, v: mx.array) -> None:
        n = k.shape[2]
        for buffers, x in ((self.keys, k), (self.values, v)):
            for b, part in zip(buffers, self._quantize(x)):
                b[rows, :, :n] = part.astype(b.dtype)


Cache = KVCache | QuantizedKVCache


def kv_group_size(head_dim: int, kv_bits: int) -> int:
    """Quantisation group along head_dim: 64, or 32 for small heads; raises for unsupported settings."""
    group = 64 if head_dim % 64 == 0 else 32
    if kv_bits != 8 or head_dim % group:
        raise ValueError(f"kv_bits must be 8 and head_dim ({head_dim}) a multiple of 32, got kv_bits={kv_bits}")
    return group


def make_caches(num_layers: int, rows: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype,
                kv_bits: int | None = None) -> list[Cache]:
    """Float caches (`kv_bits` None) or quantised ones."""
    if kv_bits is None:
        return [KVCache.zeros(rows, heads, capacity, head_dim, dtype) for _ in range(num_layers)]
    group = kv_group_size(head_dim, kv_bits)
    return [QuantizedKVCache.zeros(rows, heads, capacity, head_dim, dtype, kv_bits, group) for _ in range(num_layers)]
