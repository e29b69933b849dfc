"""The LM phase: many songs through a few batch slots, with resumable checkpoints.

Songs fill `batch_size` slots; when one ends (all codebooks emitted EOS, or the last pattern column) its
slot is refilled from the queue, so the batch stays full. The host reads each step's done flags one step
late: step s+1 is already queued on the device when step s's flags are read, which hides the sync. A
finished slot therefore runs one extra, ignored step.

A checkpoint is `{"columns": [Q, s+1] int32, "step": s, "ended": [Q] bool, "timesteps": T}`: the pattern
columns written so far and the codebooks already ended. Sampling noise is a function of (seed, step)
alone (see `levo_batch.lm.sampling`), so that is the whole state; a resumed song prefills its prefix plus
the history and continues exactly where it stopped (same tokens, up to float rounding between a batched
prefill and step-by-step decoding, which in float32 never flips a choice on the fixtures).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from levo_batch.contracts import SongRequest, TokenSink
from levo_batch.lm.batch import SongSlots, StepOutput, auto_slots
from levo_batch.lm.cache import kv_group_size
from levo_batch.lm.conditioners import CondInputs, banned_prompt_ids, condition_inputs
from levo_batch.lm.config import LMConfig
from levo_batch.lm.model import LeVoLM
from levo_batch.lm.pattern import cut_at_eos, num_columns, revert_pattern
from levo_batch.lm.sampling import SamplingParams
from levo_batch.lm.tokenizer import TextTokenizers

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """Host-side inputs of a song: conditioner tokens, and the written columns and ended flags to start from."""

    song: SongRequest
    inputs: CondInputs
    columns: np.ndarray
    ended: np.ndarray


class MLXTokenGenerator:
    """`TokenGenerator` running `LeVoLM` with classifier-free guidance on batches of songs."""

    def __init__(self, model: LeVoLM, cfg: LMConfig, tokenizers: TextTokenizers, *, model_id: str,
                 sampling: SamplingParams, batch_size: int | None = None, max_duration: float | None = None,
                 checkpoint_every: int = 0, kv_bits: int | None = None):
        """Fuses `model`'s projections in place (`LeVoLM.fuse_projections`), so hand it a model loaded for
        generation only. `kv_bits` 8 stores the attention caches quantised (see `levo_batch.lm.cache`): faster
        and smaller at large batches, not bit-faithful to upstream; None keeps them in the model's dtype.
        `batch_size` None sizes the batch from free device memory (`levo_batch.lm.batch.auto_slots`);
        `checkpoint_every` 0 writes no mid-song checkpoint (the CLI always asks for them)."""
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        duration = cfg.max_dur if max_duration is None else max_duration
        self.timesteps = int(duration * cfg.frame_rate)
        if self.timesteps < 1:
            raise ValueError(f"max_duration {duration} s gives no audio frame at {cfg.frame_rate} Hz")
        self.model, self.cfg, self.tokenizers = model.fuse_projections(), cfg, tokenizers
        self.model_id, self.sampling = model_id, sampling.with_cfg_coef(cfg.cfg_coef)
        self.batch_size, self.checkpoint_every = batch_size, checkpoint_every
        if kv_bits is not None:
            kv_group_size(cfg.head_dim, kv_bits)
        self.kv_bits = kv_bits

    def fingerprint(self) -> dict:
        return {
            "lm": "levo-batch-mlx-v1",
            "model": self.model_id,
            "timesteps": self.timesteps,
            "kv_bits": self.kv_bits,
            "sampling": self.sampling.fingerprint(),
        }

    def slots(self) -> int:
        """Songs decoded together: `batch_size`, or as many as free device memory holds."""
        if self.batch_size is not None:
            return self.batch_size
        dtype = self.model.transformer.model.norm.weight.dtype
        return auto_slots(self.cfg, self.timesteps, self.kv_bits, dtype)

    def max_steps(self) -> int:
        return num_columns(self.timesteps, self.cfg.delays) - 1

    def generate(self, songs: Sequence[SongRequest], sink: TokenSink) -> None:
        """Raises ValueError naming the song before any decoding if a song's prompt or resume state is invalid."""
        queue: deque[_Prepared] = deque()
        for p in (self._prepare(song) for song in songs):
            if p.ended.all() or p.columns.shape[1] - 1 >= self.max_steps():
                sink.finished(p.song.idx, self._tokens(p.columns))
            else:
                queue.append(p)
        if not queue:
            return
        size = min(self.slots(), len(queue))
        log.info("LM batch: %d songs at a time%s", size,
                 "" if self.batch_size else " (--batch-size auto: what free device memory holds caches for)")
        slots = SongSlots(self.model, self.cfg, self.sampling, size, self.timesteps, kv_bits=self.kv_bits)
        running: dict[int, SongRequest] = {}
        self._fill(slots, queue, running)
        pending: StepOutput | None = None
        while slots.busy() or pending is not None:
            current = slots.step() if slots.busy() else None
            if pending is not None:
                self._collect(pending, slots, running, sink)
                self._fill(slots, queue, running)
            pending = current

    def _prepare(self, song: SongRequest) -> "_Prepared":
        try:
            inputs = condition_inputs(self.tokenizers, self.cfg, song.lyrics, song.descriptions, song.prompt_tokens,
                                      song=song.idx)
        except ValueError as e:
            raise ValueError(f"song {song.idx}: {e}") from e
        return _Prepared(song, inputs, *self._start_state(song))

    def _fill(self, slots: SongSlots, queue: deque, running: dict) -> None:
        for slot in slots.free_slots()[: len(queue)]:
            p = queue.popleft()
            s1, s2 = self.model.condition_provider.prefix(p.inputs)
            banned = banned_prompt_ids(p.song.prompt_tokens, self.cfg)
            running[slots.insert(slot, s1, s2, banned, p.song.seed, p.columns, p.ended)] = p.song

    def _start_state(self, song: SongRequest) -> tuple[np.ndarray, np.ndarray]:
        depth = self.cfg.code_depth
        if song.resume is None:
            return np.full((depth, 1), self.cfg.special_id, dtype=np.int32), np.zeros(depth, dtype=bool)
        state = song.resume
        try:
            columns = np.asarray(state["columns"], dtype=np.int32)
            step, timesteps = int(state["step"]), int(state["timesteps"])
            ended = np.asarray(state["ended"], dtype=bool)
        except KeyError as e:
            raise ValueError(f"song {song.idx}: resume state lacks {e}; delete its checkpoint to restart it") from e
        if timesteps != self.timesteps or columns.shape != (depth, step + 1) or ended.shape != (depth,):
            raise ValueError(
                f"song {song.idx}: resume state is for {timesteps} frames with columns {columns.shape}, this run "
                f"generates {self.timesteps} frames; use the same max_duration or delete its checkpoint"
            )
        return columns, ended

    def _collect(self, out: StepOutput, slots: SongSlots, running: dict, sink: TokenSink) -> None:
        """Report step results: progress, checkpoints, finished songs (freeing their slots)."""
        done = out.done.tolist()
        total = self.max_steps()
        for slot, owner in enumerate(out.owners):
            if owner is None or slots.owners[slot] != owner:
                continue
            song, column = running[owner], out.columns[slot]
            sink.progress(song.idx, column, total)
            if done[slot]:
                sink.finished(song.idx, self._tokens(np.array(out.seq[slot, :, : column + 1])))
                slots.release(slot)
                del running[owner]
            elif self.checkpoint_every and column % self.checkpoint_every == 0:
                sink.checkpoint(song.idx, {
                    "columns": np.array(out.seq[slot, :, : column + 1]),
                    "step": np.array(column, dtype=np.int64),
                    "ended": np.array(out.ended[slot]),
                    "timesteps": np.array(self.timesteps, dtype=np.int64),
                })

    def _tokens(self, columns: np.ndarray) -> np.ndarray:
        """Written columns -> upstream's output: reverted codes cut at the first EOS, `[Q, <=T]` int64."""
        full = np.full((self.cfg.code_depth, self.max_steps() + 1), self.cfg.special_id, dtype=np.int64)
        full[:, : columns.shape[1]] = columns
        return cut_at_eos(revert_pattern(full, self.timesteps, self.cfg.delays), self.cfg.eos_id)
