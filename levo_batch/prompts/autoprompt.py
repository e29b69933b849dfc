"""Upstream's auto-prompt library (`tools/new_auto_prompt.pt`): pre-computed prompt tokens per genre/language.

A job with `auto_prompt_audio_type` gets one `[3, T]` token prompt (rows mixed, vocal, bgm) drawn from
`library[genre][lang]`, with `lang` from its lyrics. `Auto` is an ordinary key of the library, exactly as in
upstream's generate.py. Upstream draws the entry with numpy's global, time-seeded RNG; we draw it from the
song's own seed so a song renders the same in every run and batch.

The `.pt` is a pickle. It is opened with `torch.load(weights_only=True)`, which only rebuilds tensors and
plain containers, never arbitrary objects; it is then converted once to a sibling `.npz` that later runs read
instead (and that needs no torch).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from levo_batch.atomic import atomic_write
from levo_batch.errors import LevoError, PromptError
from levo_batch.text import lyric_language

_KEY_SEP = "|"
"""npz member names are `genre|lang|index`; genres contain `/` and `&` but never `|`."""


class AutoPromptError(LevoError, ValueError):
    """The auto-prompt library file is missing, unsafe or not in upstream's layout.

    Not a PromptError on purpose: it concerns every auto-prompt job, so the run stops before the LM phase
    with the fix, instead of failing those songs one by one. A missing genre/language entry is per job.
    """


@dataclass(frozen=True)
class AutoPromptLibrary:
    """`entries[genre][lang]` -> list of `[3, T]` int64 token prompts."""

    entries: dict[str, dict[str, list[np.ndarray]]]
    source: Path

    @classmethod
    def load(cls, path: str | Path) -> "AutoPromptLibrary":
        """Read the `.npz` cache when it is at least as new as the `.pt`, else convert the `.pt` (and cache it)."""
        path = Path(path)
        cache = path.with_suffix(".npz")
        if not path.is_file() and not cache.is_file():
            raise AutoPromptError(
                f"auto-prompt library {path} not found. It comes with upstream's GitHub repository "
                "(tools/new_auto_prompt.pt, fetched with `git lfs pull`); put it under the runtime dir."
            )
        if cache.is_file() and (not path.is_file() or cache.stat().st_mtime >= path.stat().st_mtime):
            return cls(_read_npz(cache), cache)
        entries = _read_pt(path)
        _write_npz(cache, entries)
        return cls(entries, path)

    def choose(self, genre: str, gt_lyric: str, seed: int) -> tuple[np.ndarray, dict]:
        """A `[3, T]` prompt for `genre` in the lyrics' language, picked by `seed`, and the facts to record."""
        lang = lyric_language(gt_lyric)
        if genre not in self.entries:
            raise PromptError(
                f"auto-prompt library {self.source} has no genre {genre!r} (it has: "
                f"{', '.join(sorted(self.entries))}); re-download tools/new_auto_prompt.pt."
            )
        choices = self.entries[genre].get(lang, [])
        if not choices:
            raise PromptError(
                f"auto-prompt library {self.source} has no {lang!r} prompts for genre {genre!r}; "
                "re-download tools/new_auto_prompt.pt."
            )
        index = int(np.random.default_rng(seed).integers(len(choices)))
        return choices[index], {"auto_prompt": {"genre": genre, "lang": lang, "index": index}}


def _read_pt(path: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise AutoPromptError(
            f"{path} is a Git LFS pointer, not the library: run `git lfs pull` in the SongGeneration clone "
            "(or download tools/new_auto_prompt.pt from the hub) and copy the real file."
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise AutoPromptError(
            f"refusing to load {path}: it is not a plain tensor library that loads without running "
            f"arbitrary code ({str(e).splitlines()[0]}). Re-download upstream's tools/new_auto_prompt.pt."
        ) from e
    return _validate(raw, path)


def _validate(raw: object, path: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """Upstream's layout `{genre: {lang: [Tensor (1, 3, T) int]}}` as numpy `[3, T]` int64 arrays."""
    if not isinstance(raw, dict) or not raw:
        raise AutoPromptError(f"{path}: expected a dict genre -> lang -> list of token tensors")
    entries: dict[str, dict[str, list[np.ndarray]]] = {}
    for genre, langs in raw.items():
        if not isinstance(langs, dict):
            raise AutoPromptError(
                f"{path}: genre {genre!r} maps to {type(langs).__name__}, expected a dict of languages"
            )
        entries[str(genre)] = {}
        for lang, prompts in langs.items():
            if not isinstance(prompts, (list, tuple)):
                raise AutoPromptError(f"{path}: {genre!r}/{lang!r} is {type(prompts).__name__}, expected a list")
            arrays = []
            for i, t in enumerate(prompts):
                if not (isinstance(t, torch.Tensor) and t.dim() == 3 and t.shape[:2] == (1, 3)
                        and not t.is_floating_point()):
                    raise AutoPromptError(
                        f"{path}: {genre!r}/{lang!r}[{i}] is not an integer tensor of shape (1, 3, T)"
                    )
                arrays.append(t[0].numpy().astype(np.int64))
            entries[str(genre)][str(lang)] = arrays
    return entries


def _read_npz(path: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    entries: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            genre, lang, index = name.split(_KEY_SEP)
            entries.setdefault(genre, {}).setdefault(lang, {})[int(index)] = z[name]
    return {g: {lang: [d[i] for i in sorted(d)] for lang, d in langs.items()} for g, langs in entries.items()}


def _write_npz(path: Path, entries: dict[str, dict[str, list[np.ndarray]]]) -> None:
    """Best effort: a read-only runtime dir only costs the conversion again next run."""
    arrays = {
        _KEY_SEP.join((genre, lang, str(i))): a
        for genre, langs in entries.items()
        for lang, prompts in langs.items()
        for i, a in enumerate(prompts)
    }
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError:
        pass
