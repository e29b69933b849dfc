"""A fixed number of song slots decoded together, each slot a [cond, null] pair of rows.

Every slot carries its own song state on the device: written pattern columns, the column it feeds next,
per-codebook EOS flags, repetition-penalty counts over its window, prompt ban and seed. One `step` advances
all slots by one pattern column with a single model call on `2 * slots` rows; all logit processing, the
choice and the bookkeeping stay on the device, so the host only reads a `[slots]` done flag per step (and
can read it one step late). A slot is refilled by prefilling the new song's prefix (plus its history when
resuming) with batch 2 and copying the keys/values into the slot's rows: songs never share a computation
that depends on the others, so a song's tokens do not depend on its batch mates.

Penalty counts are real counts (not presence) so the window can slide by adding the new column and
subtracting the one leaving it, instead of rescanning `window` columns each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import numpy as np

from levo_batch.lm import decode_attention
from levo_batch.lm.cache import StepContext, kv_group_size, make_caches
from levo_batch.lm.config import LMConfig
from levo_batch.lm.model import LeVoLM
from levo_batch.lm.pattern import num_columns
from levo_batch.lm.sampling import SamplingParams, choose, process_logits, seed_words

ATTENTION_BUCKET = 256
"""Attended cache length (and the capacity) is a multiple of this, so step shapes repeat instead of growing
every step, and matmul kernels that want aligned sizes apply (e.g. MLX CUDA's quantised ones). With the CUDA
decode kernel every step spans the whole capacity instead (splits past a row's length exit at once), so the
step compiles once per run rather than once per bucket (~20 times in a 150-s song)."""

SLACK_COLUMNS = 2
"""A slot may run up to two columns past its last one: one step is scheduled before the host has read that
the song ended, and the host then freezes the slot; buffers are sized for it so nothing is clamped."""

MAX_AUTO_SLOTS = 64
CPU_SLOTS = 8
"""`auto_slots` bounds: the CPU backend gains nothing from huge batches (it is for tests and small runs)."""


def cache_capacity(cfg: LMConfig, timesteps: int) -> int:
    """Cache columns of a slot: the prefix and every pattern column of the longest song, bucket-aligned."""
    return _round_up(cfg.prefix_len + num_columns(timesteps, cfg.delays) + SLACK_COLUMNS, ATTENTION_BUCKET)


def slot_cache_bytes(cfg: LMConfig, timesteps: int, kv_bits: int | None, dtype: mx.Dtype) -> int:
    """Device bytes of one slot's caches (two rows, keys and values, both stacks)."""
    per_value = dtype.size if kv_bits is None else kv_bits / 8 + 2 * dtype.size / kv_group_size(cfg.head_dim, kv_bits)
    columns = cache_capacity(cfg, timesteps) * (cfg.num_layers + cfg.num_layers_sub)
    return int(2 * 2 * columns * cfg.dim * per_value)


def auto_slots(cfg: LMConfig, timesteps: int, kv_bits: int | None, dtype: mx.Dtype) -> int:
    """As many slots as the device's free memory holds caches for (after the loaded weights and a headroom of
    7 %, at least 6 GiB, for activations, prefills and the allocator's cache), between 1 and `MAX_AUTO_SLOTS`;
    `CPU_SLOTS` on the CPU. Measured on an H200 (150.8 GB) with v2-large in fp16 and 150-s songs: 32 slots
    (the pipeline peaks at 133.0 GiB; 33 runs out of memory, and 8 % headroom gave 31), 60 with 8-bit caches
    (peak 133.1 GiB)."""
    if mx.default_device() != mx.gpu:
        return CPU_SLOTS
    info = mx.device_info()
    total = info.get("total_memory") or info.get("max_recommended_working_set_size") or info.get("memory_size")
    if not total:
        return CPU_SLOTS
    free = total - mx.get_active_memory() - max(6 * 2**30, 0.07 * total)
    return max(1, min(MAX_AUTO_SLOTS, int(free // slot_cache_bytes(cfg, timesteps, kv_bits, dtype))))


@dataclass
class StepOutput:
    """Device results of one step plus the host's view of who was in each slot when it was scheduled."""

    owners: tuple[int | None, ...]
    columns: tuple[int, ...]
    done: mx.array  # [slots] bool
    seq: mx.array  # [slots, Q, C] int32 written columns
    ended: mx.array  # [slots, Q] bool
    logits: mx.array | None  # [slots, Q, V] processed logits (kept only on request)


def _advance(logits, seq, col, ended, counts, banned, seeds, active, *, cfg, params, timesteps):
    """Logits of one step -> next state."""
    depth = cfg.code_depth
    vocab = cfg.code_size + 1
    proc = process_logits(logits, counts[..., :vocab] > 0, banned, params.cfg_coef, params.penalty, cfg.code_size)
    column = col + 1
    tok = choose(proc, seeds, column, params)
    t = column[:, None] - 1 - mx.array(cfg.delays, dtype=mx.int32)[None, :]
    live = (t >= 0) & (t < timesteps) & ~ended
    tok = mx.where(live, tok, cfg.special_id)
    ended = ended | (tok == cfg.eos_id)
    where = mx.broadcast_to(column[:, None, None], (col.shape[0], depth, 1))
    seq = mx.put_along_axis(seq, where, tok[:, :, None], axis=2)
    ids = mx.arange(counts.shape[-1], dtype=mx.int32)
    counts = counts + (tok[:, :, None] == ids).astype(counts.dtype)
    if params.penalty_window > 0:
        gone = column - params.penalty_window
        old = mx.take_along_axis(seq, mx.maximum(where - params.penalty_window, 0), axis=2)
        counts = counts - ((old == ids) & (gone >= 1)[:, None, None]).astype(counts.dtype)
    last = timesteps + max(cfg.delays)
    done = mx.all(ended, axis=1) | (column >= last)
    return proc, seq, col + active.astype(col.dtype), ended, counts, done


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _rebuild(layout, arrays) -> list:
    """Caches from a flat array list; `layout` is `(array count, rebuilder)` per cache."""
    caches, i = [], 0
    for n, rebuild in layout:
        caches.append(rebuild(list(arrays[i : i + n])))
        i += n
    return caches


def _step(seq, col, ended, counts, banned, seeds, active, *kv, model, cfg, params, timesteps, length, layout):
    """One decoding step of every slot as a pure function of the state and the cache arrays (`kv`: each
    layer's `state`, first stack then second), so it compiles once per attended `length`: tracing ~50
    layers in Python each step would cost as much as the step itself at batch 1."""
    slots = col.shape[0]
    caches = _rebuild(layout, kv)
    where = mx.broadcast_to(col[:, None, None], (slots, cfg.code_depth, 1))
    fed = mx.take_along_axis(seq, where, axis=2)[:, :, 0]
    ctx = StepContext.build(mx.repeat(col + cfg.prefix_len, 2), length, mx.repeat(active, 2))
    logits = model.step(mx.repeat(fed, 2, axis=0), caches[: cfg.num_layers], caches[cfg.num_layers :], ctx)
    state = _advance(logits, seq, col, ended, counts, banned, seeds, active, cfg=cfg, params=params,
                     timesteps=timesteps)
    return (*state, *[a for c in caches for a in c.state])


class SongSlots:
    """Device state and caches for `slots` songs of at most `timesteps` frames each."""

    def __init__(self, model: LeVoLM, cfg: LMConfig, params: SamplingParams, slots: int, timesteps: int,
                 keep_logits: bool = False, kv_bits: int | None = None):
        self.model, self.cfg, self.params = model, cfg, params.with_cfg_coef(cfg.cfg_coef)
        self.slots, self.timesteps, self.keep_logits = slots, timesteps, keep_logits
        self.width = num_columns(timesteps, cfg.delays) + SLACK_COLUMNS
        self.capacity = cache_capacity(cfg, timesteps)
        dtype = model.transformer.model.norm.weight.dtype
        shape = (2 * slots, cfg.num_heads, self.capacity, cfg.head_dim)
        self.caches1 = make_caches(cfg.num_layers, *shape, dtype, kv_bits)
        self.caches2 = make_caches(cfg.num_layers_sub, *shape, dtype, kv_bits)
        self._layout = [(len(c.state), c.rebuilder()) for c in self.caches1 + self.caches2]
        q = cfg.code_depth
        self.seq = mx.full((slots, q, self.width), cfg.special_id, dtype=mx.int32)
        self.col = mx.zeros((slots,), dtype=mx.int32)
        self.ended = mx.zeros((slots, q), dtype=mx.bool_)
        self.counts = mx.zeros((slots, q, cfg.code_size + 2), dtype=mx.int32)
        self.banned = mx.zeros((slots, cfg.code_size + 1), dtype=mx.bool_)
        self.seeds = mx.zeros((slots, 2), dtype=mx.uint32)
        self.active = mx.zeros((slots,), dtype=mx.bool_)
        self.owners: list[int | None] = [None] * slots
        self.host_col = [0] * slots
        self._next_owner = 0
        self._compiled: dict[int, object] = {}
        self._whole_cache = decode_attention.applies(cfg.head_dim, dtype)

    def _state(self) -> list[mx.array]:
        caches = self.caches1 + self.caches2
        return [self.seq, self.col, self.ended, self.counts, self.banned, self.seeds, self.active] + [
            a for c in caches for a in c.state
        ]

    def free_slots(self) -> list[int]:
        return [i for i, o in enumerate(self.owners) if o is None]

    def busy(self) -> bool:
        return any(o is not None for o in self.owners)

    def insert(self, slot: int, prefix1: mx.array, prefix2: mx.array, banned_ids: np.ndarray, seed: int,
               columns: np.ndarray, ended: np.ndarray) -> int:
        """Start a song in a free slot; returns its owner token (distinguishes reuses of the same slot).

        `prefix*` are its `[2, prefix_len, D]` condition streams (rows cond, null), `columns` `[Q, s + 1]` the
        pattern columns written so far (just column 0 for a new song) and `ended` its per-codebook EOS flags.
        """
        cfg = self.cfg
        # Settle pending steps first, so the in-place writes below do not have to copy arrays a queued
        # step still reads.
        mx.eval(self._state())
        fed = columns.shape[1] - 1
        _, _, kv1, kv2 = self.model.prefill(*self._streams(prefix1, prefix2, columns[:, :fed]))
        rows = slice(2 * slot, 2 * slot + 2)
        for caches, kv in ((self.caches1, kv1), (self.caches2, kv2)):
            for cache, (k, v) in zip(caches, kv):
                cache.insert(rows, k, v)
        row = np.full((cfg.code_depth, self.width), cfg.special_id, dtype=np.int32)
        row[:, : fed + 1] = columns
        self.seq[slot] = mx.array(row)
        self.col[slot] = fed
        self.ended[slot] = mx.array(ended.astype(bool))
        self.counts[slot] = mx.array(self._window_counts(columns))
        mask = np.zeros(cfg.code_size + 1, dtype=bool)
        mask[banned_ids] = True
        self.banned[slot] = mx.array(mask)
        self.seeds[slot] = mx.array(seed_words(seed), dtype=mx.uint32)
        self.active[slot] = True
        self.owners[slot] = self._next_owner
        self.host_col[slot] = fed
        self._next_owner += 1
        return self.owners[slot]

    def _streams(self, prefix1: mx.array, prefix2: mx.array, history: np.ndarray) -> tuple[mx.array, mx.array]:
        """The prefix streams followed by the embedded history columns, if any: a fresh song has none, and
        embedding an empty array breaks quantised embeddings (MLX cannot reshape an empty array)."""
        if history.shape[1] == 0:
            return prefix1, prefix2
        x1, x2 = self.model.embed_codes(mx.array(history[None].astype(np.int32)))
        return tuple(mx.concatenate([p, mx.broadcast_to(x, (2, *x.shape[1:])).astype(p.dtype)], axis=1)
                     for p, x in ((prefix1, x1), (prefix2, x2)))

    def _window_counts(self, columns: np.ndarray) -> np.ndarray:
        """Penalty counts of the columns the next step sees: the last `window` written (never column 0)."""
        last = columns.shape[1] - 1
        window = self.params.penalty_window
        first = 1 if window == 0 else max(1, last - window + 1)
        size = self.cfg.code_size + 2
        return np.stack([np.bincount(r, minlength=size) for r in columns[:, first : last + 1]]).astype(np.int32)

    def release(self, slot: int) -> None:
        """Free a slot; its rows keep their place in the step's matmuls until reused (shapes stay fixed) but
        attend a single cache slot, so an idle slot costs no attention bandwidth."""
        self.active[slot] = False
        self.owners[slot] = None

    def step(self) -> StepOutput:
        """Schedule one pattern column for every slot (lazy: nothing is evaluated here)."""
        cfg = self.cfg
        top = max(self.host_col[i] for i in range(self.slots) if self.owners[i] is not None)
        length = self.capacity if self._whole_cache else _round_up(cfg.prefix_len + top + 1, ATTENTION_BUCKET)
        if length not in self._compiled:
            self._compiled[length] = mx.compile(partial(
                _step, model=self.model, cfg=cfg, params=self.params, timesteps=self.timesteps, length=length,
                layout=self._layout))
        proc, self.seq, self.col, self.ended, self.counts, done, *kv = self._compiled[length](
            self.seq, self.col, self.ended, self.counts, self.banned, self.seeds, self.active,
            *[a for c in self.caches1 + self.caches2 for a in c.state],
        )
        caches = _rebuild(self._layout, kv)
        self.caches1, self.caches2 = caches[: cfg.num_layers], caches[cfg.num_layers :]
        for i in range(self.slots):
            if self.owners[i] is not None:
                self.host_col[i] += 1
        out = StepOutput(tuple(self.owners), tuple(self.host_col), done, self.seq, self.ended,
                         proc if self.keep_logits else None)
        mx.async_eval(done, self.seq, self.col, self.ended, self.counts, *kv)
        return out
