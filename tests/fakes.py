"""Deterministic test doubles for the model stages (never shipped): they let the pipeline be tested in
milliseconds while keeping the contracts of `levo_batch.contracts` (checkpoints, resume, per-song seeds)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from levo_batch.gen_types import GEN_TYPES
from levo_batch.contracts import DecodeRequest, Prompt, PromptAudio, SongRequest, TokenSink

STEM_GAIN = {"main": 1.0, "vocal": 0.5, "bgm": 0.25}
"""FakeDecoder's stems: the main tone scaled, so each stem file differs."""


def _song_codes(seed: int, lyrics: str, length: int) -> np.ndarray:
    digest = hashlib.sha256(f"{seed}:{lyrics}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, 16384, size=(3, length), dtype=np.int64)


@dataclass
class FakeGenerator:
    """Songs of 20-40 steps whose tokens depend only on (seed, lyrics); one step per pattern column."""

    checkpoint_every: int = 5
    stop_after_steps: int | None = None
    calls: list[list[str]] = field(default_factory=list)
    resumed_from: dict[str, int] = field(default_factory=dict)

    def fingerprint(self) -> dict:
        return {"model": "fake", "checkpoint_every": self.checkpoint_every}

    def max_steps(self) -> int:
        return 40

    def generate(self, songs: Sequence[SongRequest], sink: TokenSink) -> None:
        from levo_batch.interrupt import StopRequested

        self.calls.append([s.idx for s in songs])
        steps_done = 0
        for song in songs:
            length = 20 + song.seed % 21
            codes = _song_codes(song.seed, song.lyrics + song.descriptions, length)
            start = int(song.resume["step"]) if song.resume is not None else 0
            if song.resume is not None:
                self.resumed_from[song.idx] = start
                assert np.array_equal(song.resume["written"], codes[:, :start])
            for step in range(start + 1, length + 1):
                sink.progress(song.idx, step, self.max_steps())
                steps_done += 1
                if self.stop_after_steps is not None and steps_done == self.stop_after_steps:
                    StopRequested._requested.set()
                if step % self.checkpoint_every == 0 and step < length:
                    sink.checkpoint(song.idx, {"step": np.array(step), "written": codes[:, :step]})
            sink.finished(song.idx, codes)


class FakeDecoder:
    """Audio = one 1920-sample frame per token, a tone whose pitch follows the bgm row; `fail` idx raise."""

    sample_rate = 48000

    def __init__(self, fail: set[str] | None = None):
        self.fail = fail or set()
        self.calls: list[list[DecodeRequest]] = []

    def fingerprint(self) -> dict:
        return {"decoder": "fake"}

    def decode(self, songs: Sequence[DecodeRequest]):
        self.calls.append(list(songs))
        for song in songs:
            if song.idx in self.fail:
                raise RuntimeError(f"cannot decode {song.idx}")
            freq = 100.0 + np.repeat(song.tokens[2] % 800, 1920)
            t = np.arange(freq.size) / self.sample_rate
            tone = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            main = np.stack([tone, tone])
            yield song.idx, {stem: STEM_GAIN[stem] * main for stem in GEN_TYPES[song.gen_type].stems}


class FakePrompts:
    """Auto prompts give tokens from the seed; prompt audio gives tokens and stems; `fail` idx raise."""

    def __init__(self, fail: set[str] | None = None):
        self.fail = fail or set()
        self.released = False

    def release(self) -> None:
        self.released = True

    def prepare(self, job, seed: int) -> Prompt:
        from levo_batch.errors import PromptError

        if job.idx in self.fail:
            raise PromptError(f"{job.prompt_audio_path}: prompt audio is silent")
        tokens = _song_codes(seed, "prompt", 250)
        if job.auto_prompt_audio_type:
            return Prompt(tokens, None, {"auto_prompt": {"genre": job.auto_prompt_audio_type, "index": seed % 7}})
        stem = np.zeros((2, 48000), np.float32)
        return Prompt(tokens, PromptAudio(stem, stem), {})


@dataclass
class FakeStages:
    generator_obj: FakeGenerator = field(default_factory=FakeGenerator)
    decoder_obj: FakeDecoder = field(default_factory=FakeDecoder)
    prompts_obj: FakePrompts = field(default_factory=FakePrompts)
    built: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing_assets: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    """Extra recipe entries, standing in for CLI settings that change the audio (e.g. a temperature)."""

    def check(self, lm: bool) -> list[str]:
        return list(self.problems)

    def assets(self, needs) -> list[str]:
        return list(self.missing_assets)

    def lm_version(self) -> str:
        return "v2"

    def recipe(self, lm: bool) -> dict:
        out = {"decoder": self.decoder_obj.fingerprint()}
        if lm:
            out["lm"] = {**self.generator_obj.fingerprint(), **self.settings}
        return out

    def prompts(self):
        self.built.append("prompts")
        return self.prompts_obj

    def generator(self):
        self.built.append("generator")
        return self.generator_obj

    def decoder(self):
        self.built.append("decoder")
        return self.decoder_obj
