"""Preallocated attention caches for batched decoding with per-row positions.

Songs in one batch are at different steps (a finished song's slot is refilled by a new one), so each row
writes its keys at its own position instead of a shared offset. The buffers are allocated once for the
longest song and written in place (`put_along_axis` on an array nobody else holds lets MLX reuse the
buffer), so a step never concatenates or copies the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass
class StepContext:
    """What every attention layer of one decoding step shares.

    `positions` [R] is each row's position of the fed token (its RoPE offset and cache slot); `length` is how
    much of the cache is attended (a bucket >= max position + 1, so the shapes repeat across steps), and
    `mask` [R, 1, 1, length] hides each row's slots after its own position (stale keys of an earlier song).
    """

    positions: mx.array
    mask: mx.array
    length: int

    @classmethod
    def build(cls, positions: mx.array, length: int) -> "StepContext":
        mask = mx.arange(length)[None, None, None, :] <= positions[:, None, None, None]
        return cls(positions=positions, mask=mask, length=length)


class KVCache:
    """Keys and values of one attention layer, `[rows, heads, capacity, head_dim]`."""

    def __init__(self, keys: mx.array, values: mx.array):
        self.keys, self.values = keys, values

    @classmethod
    def zeros(cls, rows: int, heads: int, capacity: int, head_dim: int, dtype: mx.Dtype) -> "KVCache":
        shape = (rows, heads, capacity, head_dim)
        return cls(mx.zeros(shape, dtype=dtype), mx.zeros(shape, dtype=dtype))

    def write_step(self, k: mx.array, v: mx.array, ctx: StepContext) -> tuple[mx.array, mx.array]:
        """Store one token per row at its own position; return the attended part of the cache."""
        idx = ctx.positions[:, None, None, None]
        self.keys = mx.put_along_axis(self.keys, idx, k.astype(self.keys.dtype), axis=2)
        self.values = mx.put_along_axis(self.values, idx, v.astype(self.values.dtype), axis=2)
        return self.keys[:, :, : ctx.length], self.values[:, :, : ctx.length]

    def insert(self, rows: slice, k: mx.array, v: mx.array) -> None:
        """Place a prefilled sequence (positions 0..n-1) into some rows, e.g. a new song's slot."""
        n = k.shape[2]
        self.keys[rows, :, :n] = k.astype(self.keys.dtype)
        self.values[rows, :, :n] = v.astype(self.values.dtype)


def make_caches(num_layers: int, rows: int, heads: int, capacity: int, head_dim: int, dtype) -> list[KVCache]:
    return [KVCache.zeros(rows, heads, capacity, head_dim, dtype) for _ in range(num_layers)]
