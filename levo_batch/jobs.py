"""Reading and validating the input jsonl (upstream's format: one job object per line).

A batch run can take hours, so the whole file is checked up front and every problem is reported at once,
each as `file:line: field: message`, before anything is loaded or written. Checks mirror what upstream's
generate.py would crash on (as errors) and add what it silently tolerates but almost certainly is a mistake
(as warnings, errors with --strict), such as a misspelt lyric tag.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import orjson
import soundfile

from .audio_formats import UndecodableAudio
from .audio_formats import has_samples as ffmpeg_has_samples
from .errors import LevoError
from .gen_types import GEN_TYPES
from .text import AUTO_PROMPT_TYPES, lyric_issues

FIELDS = ("idx", "gt_lyric", "descriptions", "prompt_audio_path", "auto_prompt_audio_type")
"""The keys upstream reads; any other key is kept and passed through to the output jsonl."""

MAX_IDX_BYTES = 200
"""Leaves room for `_vocal.flac` within the 255-byte file name limit of common file systems."""

_WINDOWS_FORBIDDEN = '<>:"|?*'
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
_LYRIC_EXAMPLE = "[intro-short] ; [verse] first line.second line ; [chorus] ... ; [outro-short]"


@dataclass(frozen=True)
class Job:
    """One validated line. `item` is the original object, key order kept, for the output jsonl."""

    idx: str
    line: int
    gt_lyric: str
    descriptions: str | None
    prompt_audio_path: Path | None
    auto_prompt_audio_type: str | None
    item: dict = field(hash=False)


@dataclass(frozen=True)
class Problem:
    """A finding about the input file; `line` 0 means the file as a whole."""

    path: Path
    line: int
    field: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class JobsError(LevoError, ValueError):
    """The input file cannot be run; `problems` holds every error and warning found."""

    def __init__(self, problems: list[Problem], *, strict: bool = False):
        self.problems = problems
        errors = sum(p.severity == "error" for p in problems)
        warnings = len(problems) - errors
        lines = [str(p) if p.severity == "error" else f"{p} (warning)" for p in problems]
        summary = f"{_count(errors, 'error')} and {_count(warnings, 'warning')} in {problems[0].path}"
        if strict and warnings:
            summary += " (--strict treats warnings as errors)"
        super().__init__("\n".join([*lines, summary + "; fix them and run again."]))


def load_jobs(path: Path, *, strict: bool = False, cwd: Path | None = None,
              gen_type: str = "mixed") -> tuple[list[Job], list[Problem]]:
    """Validate the whole jsonl at `path`, returning its jobs in input order and the warnings.

    Raises JobsError listing every problem if any line has an error (or a warning, with `strict`). Relative
    `prompt_audio_path`s are looked up next to the jsonl first, then in `cwd` (default: the working directory),
    so a jsonl keeps working when run from elsewhere while upstream-style cwd-relative paths still resolve.
    An idx that names another song's stem file of `gen_type` (--separate) is an error. Never writes anything.
    """
    path = Path(path)
    search_dirs = _unique([path.absolute().parent, Path(cwd or os.getcwd()).absolute()])
    problems: list[Problem] = []
    jobs: list[Job] = []
    first_line: dict[str, int] = {}
    for number, raw in _read_lines(path):
        at = _Line(path, number, problems)
        item = _parse(raw, at)
        if item is None:
            continue
        job = _check_item(item, at, search_dirs, first_line)
        if job is not None:
            jobs.append(job)
    if not first_line and not problems:
        problems.append(Problem(path, 0, "file", "contains no jobs; write one JSON object per line"))
    problems += _name_clashes(path, first_line, gen_type=gen_type)
    problems.sort(key=lambda p: p.line)
    if any(p.severity == "error" or strict for p in problems):
        raise JobsError(problems, strict=strict)
    return jobs, problems


@dataclass
class _Line:
    path: Path
    number: int
    problems: list[Problem]
    errors: int = 0

    def error(self, field_name: str, message: str) -> None:
        self.errors += 1
        self.problems.append(Problem(self.path, self.number, field_name, message))

    def warning(self, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.path, self.number, field_name, message, "warning"))


def _read_lines(path: Path) -> list[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; an unusable file raises JobsError at once."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        _fail(path, f"not found (looked at {path.absolute()}); check the path of the input jsonl")
    except IsADirectoryError:
        _fail(path, "is a directory; pass the .jsonl file itself")
    except OSError as e:
        _fail(path, f"cannot be read ({e.strerror}); check that it exists and that you may read it")
    lines = data.removeprefix(b"\xef\xbb\xbf").splitlines()
    return [(number, raw) for number, raw in enumerate(lines, start=1) if raw.strip()]


def _fail(path: Path, message: str) -> NoReturn:
    raise JobsError([Problem(path, 0, "file", message)])


def _parse(raw: bytes, at: _Line) -> dict | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at.error("line", f"is not valid UTF-8 (byte {e.start + 1}); save the file as UTF-8")
        return None
    try:
        item = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        at.error("line", f"invalid JSON at column {e.colno}: {e.msg}; each line must be one complete JSON object")
        return None
    if not isinstance(item, dict):
        at.error("line", f"is {_describe(item)}, expected an object like {{\"idx\": \"song_01\", \"gt_lyric\": ...}}")
        return None
    return item


def _check_item(item: dict, at: _Line, search_dirs: list[Path], first_line: dict[str, int]) -> Job | None:
    """Report every problem of one object; a Job only when it has no error (warnings allowed)."""
    idx = _check_idx(item, at, first_line)
    gt_lyric = _check_lyric(item, at)
    descriptions = item.get("descriptions")
    if descriptions is not None and not isinstance(descriptions, str):
        at.error(
            "descriptions",
            f"must be a string of comma-separated style tags such as \"female, pop, sad, piano and drums, "
            f"the bpm is 120\" (or null / left out), got {_describe(descriptions)}",
        )
    prompt_path = _check_prompt_path(item.get("prompt_audio_path"), at, search_dirs)
    auto_type = _check_auto_type(item.get("auto_prompt_audio_type"), at)
    if item.get("prompt_audio_path") is not None and item.get("auto_prompt_audio_type") is not None:
        at.error(
            "auto_prompt_audio_type",
            "cannot be combined with prompt_audio_path (upstream rejects the pair); keep only one of them",
        )
    _check_unknown_keys(item, at)
    if at.errors:
        return None
    return Job(idx, at.number, gt_lyric, descriptions, prompt_path, auto_type, item)


def _check_idx(item: dict, at: _Line, first_line: dict[str, int]) -> str | None:
    if "idx" not in item:
        at.error("idx", 'missing; add a unique name such as "idx": "song_01" (it names audios/{idx}.flac)')
        return None
    idx = item["idx"]
    if isinstance(idx, (int, float)) and not isinstance(idx, bool):
        at.error("idx", f'must be a string, got the number {idx}; quote it: "idx": "{idx}"')
        return None
    if not isinstance(idx, str):
        at.error("idx", f'must be a string such as "song_01", got {_describe(idx)}')
        return None
    unsafe = _unsafe_file_name(idx)
    if unsafe:
        at.error("idx", f"{idx!r} {unsafe}; the output is SAVE_DIR/audios/{{idx}}.flac")
        return None
    if idx in first_line:
        at.error("idx", f"duplicate {idx!r}, first used on line {first_line[idx]}; every job needs its own idx")
        return None
    first_line[idx] = at.number
    return idx


def _unsafe_file_name(idx: str) -> str | None:
    """Why `idx` cannot safely name a file inside SAVE_DIR/audios on every OS, or None."""
    if not idx.strip():
        return "is empty; give every job a unique name such as 'song_01'"
    if "/" in idx or "\\" in idx:
        return "contains a path separator ('/' or '\\') and would escape the output folder; replace it (e.g. with '_')"
    control = next((c for c in idx if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return f"contains the control character U+{ord(control):04X}; remove it"
    if idx in (".", ".."):
        return "is a directory name, not a file name; use a plain name such as 'song_01'"
    if idx.startswith("."):
        return "starts with '.' and would become a hidden file; remove the leading dot"
    forbidden = sorted({c for c in idx if c in _WINDOWS_FORBIDDEN})
    if forbidden:
        return f"contains {' '.join(forbidden)}, not allowed in Windows file names; replace them (e.g. with '_')"
    if idx.split(".")[0].strip().upper() in _WINDOWS_RESERVED:
        return "is a reserved device name on Windows; rename it (e.g. add a prefix)"
    if idx.endswith(".partial"):
        return "ends with '.partial', which names mid-song checkpoints in SAVE_DIR/tokens; rename it"
    size = len(idx.encode("utf-8"))
    if size > MAX_IDX_BYTES:
        return f"is {size} bytes long in UTF-8; shorten it to at most {MAX_IDX_BYTES} bytes"
    return None


def _check_lyric(item: dict, at: _Line) -> str | None:
    if "gt_lyric" not in item:
        at.error("gt_lyric", f'missing; add the lyrics, e.g. "gt_lyric": "{_LYRIC_EXAMPLE}" (needed even for --bgm)')
        return None
    lyric = item["gt_lyric"]
    if not isinstance(lyric, str):
        at.error("gt_lyric", f'must be a string such as "{_LYRIC_EXAMPLE}", got {_describe(lyric)}')
        return None
    for issue in lyric_issues(lyric):
        at.warning("gt_lyric", issue)
    return lyric


def _check_prompt_path(value: object, at: _Line, search_dirs: list[Path]) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        at.error("prompt_audio_path", f"must be the path of an audio file (WAV, FLAC, ...), got {_describe(value)}")
        return None
    given = Path(value).expanduser()
    tried = [given] if given.is_absolute() else _unique([base / given for base in search_dirs])
    found = next((p for p in tried if os.path.exists(p)), None)
    if found is None:
        at.error(
            "prompt_audio_path",
            f"{value!r} not found; tried {', '.join(map(str, tried))}. Relative paths are resolved against the "
            f"jsonl's folder, then the working directory: fix the path",
        )
        return None
    try:
        has_samples = soundfile.info(str(found)).frames > 0
    except (soundfile.SoundFileError, OSError) as e:
        try:
            has_samples = ffmpeg_has_samples(found)  # m4a/aac and other FFmpeg formats, as upstream reads them
        except (UndecodableAudio, OSError) as ffmpeg:
            at.error("prompt_audio_path", f"{found} is not readable audio ({e}; {ffmpeg}); convert it to WAV or FLAC")
            return None
    if not has_samples:
        at.error("prompt_audio_path", f"{found} has no audio samples; use a music clip (the first 10 s are used)")
        return None
    return found.resolve()


def _check_auto_type(value: object, at: _Line) -> str | None:
    if value is None or value in AUTO_PROMPT_TYPES:
        return value
    allowed = ", ".join(AUTO_PROMPT_TYPES)
    if not isinstance(value, str):
        at.error("auto_prompt_audio_type", f"must be a string, one of {allowed}; got {_describe(value)}")
        return None
    match = next((t for t in AUTO_PROMPT_TYPES if _fold(t) == _fold(value)), None)
    hint = f"did you mean {match!r}? " if match else ""
    at.error("auto_prompt_audio_type", f"unknown type {value!r}; {hint}allowed (case-sensitive): {allowed}")
    return None


def _fold(name: str) -> str:
    return re.sub(r"[\W_]", "", name).casefold()


def _check_unknown_keys(item: dict, at: _Line) -> None:
    """Unknown keys are legitimate passthrough data, unless they look like a misspelt field."""
    for key in item:
        if key in FIELDS:
            continue
        close = difflib.get_close_matches(key.lower(), FIELDS, n=1, cutoff=0.7)
        if close and close[0] not in item:
            at.warning(key, f"unknown key, passed through unchanged; did you mean {close[0]!r}?")


def _name_clashes(path: Path, first_line: dict[str, int], *, gen_type: str) -> list[Problem]:
    """Distinct idx values whose output files collide on some systems (warning) or through the stem files of
    `gen_type` (error)."""
    problems = []
    by_folded: dict[str, str] = {}
    for idx, line in first_line.items():
        other = by_folded.setdefault(idx.casefold(), idx)
        if other != idx:
            problems.append(Problem(path, line, "idx", (
                f"{idx!r} differs from {other!r} (line {first_line[other]}) only in letter case; on macOS and "
                f"Windows their audio files overwrite each other: rename one"), "warning"))
        for suffix in GEN_TYPES[gen_type].extra_suffixes:
            base = idx.removesuffix(suffix)
            if base != idx and base in first_line:
                problems.append(Problem(path, line, "idx", (
                    f"with --{gen_type}, the {suffix[1:]} stem of {base!r} (line {first_line[base]}) is also "
                    f"written to audios/{idx}.flac and would overwrite this song: rename one")))
    return problems


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return "an array" if isinstance(value, list) else "an object"


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
