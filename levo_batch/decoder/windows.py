"""Upstream's `code2sound` orchestration as small pure pieces: window grid, code tiling, in-context chaining,
waveform cross-fade and output length.

A song is cut into overlapping windows of `frames` codes (40 s). Window k > 0 is conditioned on the last
`overlap` latent frames of window k-1, so one song's windows are sequential; the same window of different
songs is independent, which is what `advance` batches. The model itself enters only through callables
(`sample` for the flow, `vae_decode` for the VAE), so tests and the batching layer drive these functions
with stubs or real models alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from levo_batch.contracts import FRAME_RATE, SAMPLE_RATE
from levo_batch.decoder.vae import chunk_starts

SAMPLES_PER_FRAME = SAMPLE_RATE // FRAME_RATE


@dataclass(frozen=True)
class WindowPlan:
    """Window geometry in 25 Hz frames; upstream derives hop = 3/4 of the window from its duration."""

    frames: int
    hop: int

    @classmethod
    def for_duration(cls, seconds: int = 40) -> "WindowPlan":
        frames = seconds * FRAME_RATE
        return cls(frames, frames // 4 * 3)

    @property
    def overlap(self) -> int:
        return self.frames - self.hop


def tile_codes(codes: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """Pad `[S, L]` codes onto the window grid by repeating the sequence itself (upstream doubles it until long
    enough, then cuts): at least one window, and a whole number of hops after the first overlap."""
    def grow(c: np.ndarray, length: int) -> np.ndarray:
        while c.shape[-1] < length:
            c = np.concatenate([c, c], axis=-1)
        return c[..., :length]

    if codes.shape[-1] < plan.frames:
        codes = grow(codes, plan.frames)
    length = codes.shape[-1]
    if (length - plan.overlap) % plan.hop:
        codes = grow(codes, math.ceil((length - plan.overlap) / plan.hop) * plan.hop + plan.overlap)
    return codes


def window_starts(n_codes: int, plan: WindowPlan) -> list[int]:
    """First code of every window for `n_codes` already tiled codes."""
    return list(range(0, n_codes - plan.hop, plan.hop))


def target_samples(n_codes: int, n_prompt_codes: int) -> int:
    """Output length in samples. Upstream's float64 expression is one sample short of n*1920 for some n (29, 57,
    1003, ...); it is kept verbatim so lengths match."""
    return int((n_codes - n_prompt_codes) / 100 * 4 * SAMPLE_RATE)


def crossfade_join(parts: Sequence[np.ndarray], overlap: int) -> np.ndarray:
    """Concatenate `[C, N]` window audio with a linear fade over `overlap` samples, weights in float64."""
    out = parts[0].astype(np.float32, copy=True)
    fade_in = np.linspace(0, 1, overlap)
    fade_out = 1 - fade_in
    for cur in parts[1:]:
        out[:, -overlap:] = out[:, -overlap:] * fade_out + cur[:, :overlap] * fade_in
        out = np.concatenate([out, cur[:, overlap:].astype(np.float32)], axis=-1)
    return out


@dataclass
class WindowJob:
    """One window to sample: codes `[2, W]` (vocal, bgm), the first `incontext` frames of `context` `[W, 64]`
    are known latents, `noise` `[W, 64]` is the Euler start."""

    codes: np.ndarray
    context: torch.Tensor | None
    incontext: int
    noise: torch.Tensor


@dataclass
class SongWindows:
    """State of one code2sound call while its windows are sampled one after another.

    `codes` are the `[2, L]` vocal/bgm rows; with a prompt, `prompt_codes` `[2, Lc]` are prepended and
    `prompt_latent` `[Lp, 64]` (Lp = Lc - 1 upstream: the 40 ms misalignment is kept) seeds window 0.
    `noise(k)` gives window k's `[W, 64]` start noise. `key` is opaque to this module (the caller's label).
    """

    key: object
    codes: np.ndarray
    noise: Callable[[int], torch.Tensor]
    plan: WindowPlan
    prompt_codes: np.ndarray | None = None
    prompt_latent: torch.Tensor | None = None
    latents: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        n_prompt = 0 if self.prompt_codes is None else self.prompt_codes.shape[-1]
        full = self.codes if self.prompt_codes is None else np.concatenate([self.prompt_codes, self.codes], -1)
        self.target_len = target_samples(full.shape[-1], n_prompt)
        self.grid = tile_codes(full, self.plan)
        self.starts = window_starts(self.grid.shape[-1], self.plan)

    @property
    def prompt_frames(self) -> int:
        return 0 if self.prompt_latent is None else self.prompt_latent.shape[0]

    @property
    def done(self) -> bool:
        return len(self.latents) == len(self.starts)

    def next_window(self) -> WindowJob:
        k = len(self.latents)
        start = self.starts[k]
        codes = self.grid[:, start : start + self.plan.frames]
        if k == 0:
            context, incontext = self.prompt_latent, self.prompt_frames
        else:
            context, incontext = self.latents[-1][:, -self.plan.overlap :].t(), self.plan.overlap
        return WindowJob(codes, context, incontext, self.noise(k))

    def accept(self, latents: torch.Tensor) -> None:
        """Store window k's `[64, W]` latents (de-normalised, float32)."""
        self.latents.append(latents)

    def window_latents(self) -> list[torch.Tensor]:
        """Latents to decode per window; window 0 loses its prompt frames."""
        return [self.latents[0][:, self.prompt_frames :], *self.latents[1:]]


Sampler = Callable[[Sequence[WindowJob]], torch.Tensor]


def advance(songs: Iterable[SongWindows], sample: Sampler, batch_size: int) -> Iterator[SongWindows]:
    """Sample every window of every song, `batch_size` songs at a time, yielding each song once complete.

    Each call of `sample` gets one window of up to `batch_size` different songs (never two of one song)
    and returns `[B, 64, W]` latents. A finished song's slot is refilled from `songs` at once, so the
    batch stays full while songs of different lengths finish.
    """
    pending = iter(songs)
    active: list[SongWindows] = []
    while True:
        while len(active) < batch_size and (song := next(pending, None)) is not None:
            active.append(song)
        if not active:
            return
        latents = sample([song.next_window() for song in active])
        for song, lat in zip(active, latents):
            song.accept(lat)
        yield from (song for song in active if song.done)
        active = [song for song in active if not song.done]


def vae_prefix(frames: int, needed: int, chunk: int, overlap: int) -> int:
    """Shortest latent prefix whose chunked VAE decode equals the full decode on the first `needed` frames.

    Chunked decoding pastes independent chunks with hard cuts, so output frames before a cut never see later
    latents. Ending the prefix on a chunk-grid boundary reproduces the full decode's chunks up to there; the
    audio past the song's end (the last window's tiled tail, most of a short song's only window) is then not
    decoded at all. Uses the chunk grid of `OobleckVAE.decode_chunked` (upstream's `decode_audio`).
    """
    if frames <= chunk:
        return frames
    starts = chunk_starts(frames, chunk, overlap)
    for start, following in zip(starts, starts[1:]):
        if needed <= following + overlap // 2:
            return start + chunk
    return frames


def render(song: SongWindows, vae_decode: Callable[[torch.Tensor], torch.Tensor], chunk: int,
           overlap: int) -> np.ndarray:
    """VAE-decode a completed song's windows, cross-fade them, cut to the target length -> `[2, N]` float32.

    `vae_decode` is a chunked decode (`chunk`/`overlap` frames) of `[B, 64, T]` latents to `[B, 2, T * 1920]`
    that bounds its own memory; windows with equal latent prefixes go to it in one call. Each window decodes
    only the prefix that reaches the song's end (`vae_prefix`); audio past it stays zero and is cut.
    """
    lats = song.window_latents()
    overlap_samples = song.plan.overlap * SAMPLES_PER_FRAME
    prefixes, position = [], 0
    for lat in lats:
        needed = math.ceil(max(song.target_len - position, 0) / SAMPLES_PER_FRAME)
        prefixes.append(vae_prefix(lat.shape[-1], needed, chunk, overlap))
        position += lat.shape[-1] * SAMPLES_PER_FRAME - overlap_samples
    audio: list[np.ndarray] = []
    i = 0
    while i < len(lats):
        j = i + 1
        while j < len(lats) and (lats[j].shape, prefixes[j]) == (lats[i].shape, prefixes[i]):
            j += 1
        wav = vae_decode(torch.stack([lat[:, : prefixes[i]] for lat in lats[i:j]])).float().cpu().numpy()
        full = np.zeros((j - i, wav.shape[1], lats[i].shape[-1] * SAMPLES_PER_FRAME), dtype=np.float32)
        full[..., : wav.shape[-1]] = wav
        audio.extend(full)
        i = j
    out = crossfade_join(audio, overlap_samples)
    return np.ascontiguousarray(out[:, : song.target_len])
