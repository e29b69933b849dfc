"""Lyric and description vocabulary, and the text preprocessing upstream applies before the LM.

Everything that knows upstream's text conventions lives here, so the job validator, the LM tokenizer and the
auto-prompt choice cannot drift apart. The tag tuples are ordered: the LM tokenizer adds them as special tokens
in this order, which fixes their ids (151646 onwards), so never reorder or extend them.
"""

from __future__ import annotations

import difflib
import re

from .gen_types import GEN_TYPES

STRUCTURE_TAGS = (
    "[verse]",
    "[chorus]",
    "[bridge]",
    "[intro-short]",
    "[intro-medium]",
    "[intro-long]",
    "[outro-short]",
    "[outro-medium]",
    "[outro-long]",
    "[inst-short]",
    "[inst-medium]",
    "[inst-long]",
    "[silence]",
)
"""Section tags of the lyrics, in upstream's `conf/vocab.yaml` order (= token id order)."""

DESCRIPTION_TAGS = (
    "[Musicality-very-high]",
    "[Musicality-high]",
    "[Musicality-medium]",
    "[Musicality-low]",
    "[Musicality-very-low]",
    "[Pure-Music]",
)
"""Tags of the description conditioner, in token id order."""

VOCAL_TAGS = ("[verse]", "[chorus]", "[bridge]")
"""Sections that are sung and so need lyrics; every other structure tag is instrumental and takes none."""

AUTO_PROMPT_TYPES = (
    "Pop",
    "Latin",
    "Rock",
    "Electronic",
    "Metal",
    "Country",
    "R&B/Soul",
    "Ballad",
    "Jazz",
    "World",
    "Hip-Hop",
    "Funk",
    "Soundtrack",
    "Auto",
)
"""Genres accepted by `auto_prompt_audio_type` (keys of upstream's auto-prompt library)."""

SECTION_SEPARATOR = ";"
"""Sections are written `[tag] text ; [tag] text`; upstream's own data also uses `; ` and `;`."""

_MUSICALITY = "[Musicality-very-high]"
_PURE_MUSIC = "[Pure-Music]"
_BGM_LYRICS = "."
_CJK = re.compile(r"[\u4e00-\u9fff]")
_BRACKETED = re.compile(r"\[[^\[\]]*\]")
_FULL_WIDTH = "。，、！？；：（）"


def lm_texts(gt_lyric: str, descriptions: str | None, gen_type: str,
             version: str = "v2") -> tuple[str, str | None]:
    """The (lyrics, description) strings upstream's generate.py feeds the LM's conditioners.

    v1 checkpoints get the lower-cased description alone, or no description condition at all (None) when
    the job has none; bgm still replaces their lyrics by `.`.

    Quirks kept on purpose because the checkpoints were trained and evaluated with them: the double-space
    collapse is a single non-overlapping pass (three spaces become two), and for bgm without descriptions
    the whole description is `.`, without the musicality prefix (Python precedence in upstream's code).
    vocal and separate condition the LM exactly like mixed; they only differ at decoding.
    """
    if gen_type not in GEN_TYPES:
        raise ValueError(f"unknown gen_type {gen_type!r}; expected one of {', '.join(GEN_TYPES)}")
    bgm = GEN_TYPES[gen_type].lm_mode == "bgm"
    if version == "v1":
        lyrics = _BGM_LYRICS if bgm else gt_lyric.replace("  ", " ")
        return lyrics, descriptions.lower() if descriptions is not None else None
    if bgm:
        if descriptions is None:
            return _BGM_LYRICS, "."
        return _BGM_LYRICS, f"{_MUSICALITY}, {_PURE_MUSIC}, {descriptions.lower()}"
    style = descriptions.lower() if descriptions is not None else "."
    return gt_lyric.replace("  ", " "), f"{_MUSICALITY}, {style}"


def lyric_language(gt_lyric: str) -> str:
    """`"zh"` when at least 20% of all characters (spaces and punctuation included) are CJK ideographs.

    Mirrors upstream's rule, which picks the auto-prompt language; only U+4E00..U+9FFF count, so kana and
    hangul lyrics fall back to `"en"` like upstream. Empty lyrics are `"en"` (upstream divides by zero).
    """
    if not gt_lyric:
        return "en"
    return "zh" if len(_CJK.findall(gt_lyric)) / len(gt_lyric) >= 0.2 else "en"


def lyric_issues(gt_lyric: str) -> list[str]:
    """Everything in `gt_lyric` that departs from upstream's section format, as actionable messages.

    Upstream never checks the format: it tokenises whatever it gets, so a typo in a tag silently becomes
    plain text and the song loses its structure. These findings are therefore warnings for the caller.
    """
    if not gt_lyric.strip():
        return ["lyrics are empty; write sections like '[verse] first line.second line ; [chorus] ...'"]
    issues = []
    full_width = "".join(dict.fromkeys(c for c in gt_lyric if c in _FULL_WIDTH))
    if full_width:
        issues.append(
            f"full-width punctuation {' '.join(full_width)}; upstream's format asks for ASCII punctuation only: "
            f"'.' between phrases, ',' inside them, ' ; ' between sections"
        )
    for number, section in enumerate(gt_lyric.split(SECTION_SEPARATOR), start=1):
        issues += [f"section {number}: {issue}" for issue in _section_issues(section.strip())]
    return issues


def _section_issues(section: str) -> list[str]:
    if not section:
        return ["empty section (two ';' in a row, or a ';' at the start or end); remove the extra ';'"]
    head = _BRACKETED.match(section)
    if head is None:
        return [
            f"{_quote(section)} does not start with a structure tag; begin each section with one of "
            f"{', '.join(STRUCTURE_TAGS)}"
        ]
    tag, body = head.group(), section[head.end() :].strip()
    issues = []
    if tag not in STRUCTURE_TAGS:
        issues.append(_unknown_tag(tag))
    elif tag in VOCAL_TAGS and not body:
        issues.append(f"{tag} has no lyrics; add the sung text after the tag, or use an [inst-*] section")
    elif tag not in VOCAL_TAGS and body:
        issues.append(
            f"{tag} is instrumental and must have no lyrics, but has {_quote(body)}; "
            f"move the text into a {'/'.join(VOCAL_TAGS)} section"
        )
    for extra in _BRACKETED.findall(body):
        if extra in STRUCTURE_TAGS:
            issues.append(f"second tag {extra} inside a {tag} section; separate sections with ' ; '")
        else:
            issues.append(_unknown_tag(extra))
    return issues


def _unknown_tag(tag: str) -> str:
    close = difflib.get_close_matches(tag.lower(), STRUCTURE_TAGS, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown tag {tag} (the model reads it as plain text); {hint}known tags: {', '.join(STRUCTURE_TAGS)}"


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
