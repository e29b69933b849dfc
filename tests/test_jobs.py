import re
from pathlib import Path

import numpy as np
import orjson
import pytest
import soundfile

from audio_files import write_m4a

from levo_batch.jobs import Job, JobsError, Problem, load_jobs
from levo_batch.text import AUTO_PROMPT_TYPES, STRUCTURE_TAGS

REPO = Path(__file__).resolve().parents[1]
LYRIC = "[intro-short] ; [verse] Hello there. Here we go. ; [chorus] La la la. ; [outro-short]"
ALLOWED = ", ".join(AUTO_PROMPT_TYPES)
ESCAPES = "contains a path separator ('/' or '\\') and would escape the output folder; replace it (e.g. with '_')"


def write_jsonl(path: Path, *lines: dict | str | bytes) -> Path:
    """Objects become JSON lines; str/bytes lines are written verbatim (for broken input)."""
    raw = [orjson.dumps(x) if isinstance(x, dict) else x if isinstance(x, bytes) else x.encode() for x in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def write_audio(path: Path, frames: int = 4800) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros((frames, 2), np.float32), 48000, subtype="PCM_16")
    return path


def song(idx: str = "s1", **fields) -> dict:
    return {"idx": idx, "gt_lyric": LYRIC, **fields}


def report(path: Path, **kwargs) -> list[str]:
    """The JobsError message, line by line."""
    with pytest.raises(JobsError) as info:
        load_jobs(path, **kwargs)
    assert all(isinstance(p, Problem) for p in info.value.problems)
    return str(info.value).splitlines()


def test_valid_jobs_keep_order_line_numbers_and_original_items(tmp_path):
    prompt = write_audio(tmp_path / "clip.wav")
    path = write_jsonl(
        tmp_path / "in.jsonl",
        song("b", descriptions="Female, Pop", title="x", extra={"k": [1]}),
        "",
        "   ",
        song("a", prompt_audio_path="clip.wav", descriptions=None),
        song("c", auto_prompt_audio_type="R&B/Soul"),
    )
    jobs, warnings = load_jobs(path, cwd=tmp_path / "elsewhere")
    assert warnings == []
    first = song("b", descriptions="Female, Pop", title="x", extra={"k": [1]})
    assert jobs == [
        Job("b", 1, LYRIC, "Female, Pop", None, None, first),
        Job("a", 4, LYRIC, None, prompt.resolve(), None, song("a", prompt_audio_path="clip.wav", descriptions=None)),
        Job("c", 5, LYRIC, None, None, "R&B/Soul", song("c", auto_prompt_audio_type="R&B/Soul")),
    ]
    assert list(jobs[0].item) == ["idx", "gt_lyric", "descriptions", "title", "extra"]
    assert jobs[1].prompt_audio_path.is_absolute()


def test_crlf_and_utf8_bom_are_accepted(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(song("a")) + b"\r\n\r\n" + orjson.dumps(song("b")) + b"\r\n")
    jobs, _ = load_jobs(path)
    assert [(j.idx, j.line) for j in jobs] == [("a", 1), ("b", 3)]


def test_every_problem_of_every_line_is_reported_at_once(tmp_path):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        song("ok"),
        '{"idx": "x", "gt_lyric": "[verse] a",}',
        "[1, 2]",
        {"idx": 7, "descriptions": 3, "auto_prompt_audio_type": "pop"},
        song("ok"),
        song("w", gt_lyric="[Verse] hi"),
    )
    assert report(path) == [
        f"{path}:2: line: invalid JSON at column 37: trailing comma is not allowed; "
        "each line must be one complete JSON object",
        f'{path}:3: line: is an array, expected an object like {{"idx": "song_01", "gt_lyric": ...}}',
        f'{path}:4: idx: must be a string, got the number 7; quote it: "idx": "7"',
        f'{path}:4: gt_lyric: missing; add the lyrics, e.g. "gt_lyric": "[intro-short] ; [verse] first line.second '
        'line ; [chorus] ... ; [outro-short]" (needed even for --bgm)',
        f'{path}:4: descriptions: must be a string of comma-separated style tags such as "female, pop, sad, piano and '
        'drums, the bpm is 120" (or null / left out), got the number 3',
        f"{path}:4: auto_prompt_audio_type: unknown type 'pop'; did you mean 'Pop'? "
        f"allowed (case-sensitive): {ALLOWED}",
        f"{path}:5: idx: duplicate 'ok', first used on line 1; every job needs its own idx",
        f"{path}:6: gt_lyric: section 1: unknown tag [Verse] (the model reads it as plain text); did you mean "
        f"[verse]? known tags: {', '.join(STRUCTURE_TAGS)} (warning)",
        f"7 errors and 1 warning in {path}; fix them and run again.",
    ]


def test_problem_str_and_error_payload(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", song(""), song("w", gt_lyric=""))
    with pytest.raises(JobsError) as info:
        load_jobs(path)
    assert info.value.problems == [
        Problem(path, 1, "idx", "'' is empty; give every job a unique name such as 'song_01'; "
                "the output is SAVE_DIR/audios/{idx}.flac"),
        Problem(path, 2, "gt_lyric", "lyrics are empty; write sections like '[verse] first line.second line ; "
                "[chorus] ...'", "warning"),
    ]
    assert str(info.value.problems[0]) == f"{path}:1: idx: " + info.value.problems[0].message
    assert isinstance(info.value, ValueError)


def test_lyric_warnings_are_returned_or_fatal_with_strict(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", song("a", gt_lyric="[verse] ; [inst-short]"))
    jobs, warnings = load_jobs(path)
    assert [j.idx for j in jobs] == ["a"]
    assert [str(w) for w in warnings] == [
        f"{path}:1: gt_lyric: section 1: [verse] has no lyrics; add the sung text after the tag, "
        "or use an [inst-*] section"
    ]
    assert warnings[0].severity == "warning"
    assert report(path, strict=True) == [
        f"{warnings[0]} (warning)",
        f"0 errors and 1 warning in {path} (--strict treats warnings as errors); fix them and run again.",
    ]


@pytest.mark.parametrize(
    "idx, reason",
    [
        ("../escape", ESCAPES),
        ("a/b", ESCAPES),
        ("/etc/passwd", ESCAPES),
        ("..\\..\\win", ESCAPES),
        ("..", "is a directory name, not a file name; use a plain name such as 'song_01'"),
        (".", "is a directory name, not a file name; use a plain name such as 'song_01'"),
        (".hidden", "starts with '.' and would become a hidden file; remove the leading dot"),
        ("a\x00b", "contains the control character U+0000; remove it"),
        ("line\nbreak", "contains the control character U+000A; remove it"),
        ("   ", "is empty; give every job a unique name such as 'song_01'"),
        ("a:b?", "contains : ?, not allowed in Windows file names; replace them (e.g. with '_')"),
        ("CON", "is a reserved device name on Windows; rename it (e.g. add a prefix)"),
        ("lpt1.take2", "is a reserved device name on Windows; rename it (e.g. add a prefix)"),
        ("歌" * 67, "is 201 bytes long in UTF-8; shorten it to at most 200 bytes"),
    ],
)
def test_unsafe_idx_is_rejected(tmp_path, idx, reason):
    path = write_jsonl(tmp_path / "in.jsonl", song(idx))
    assert report(path)[0] == f"{path}:1: idx: {idx!r} {reason}; the output is SAVE_DIR/audios/{{idx}}.flac"


def test_safe_unusual_idx_is_accepted(tmp_path):
    names = ["歌" * 66 + "ab", "a..b", "Song 01 (live)", "-dash", "con_song"]
    path = write_jsonl(tmp_path / "in.jsonl", *(song(n) for n in names))
    assert [j.idx for j in load_jobs(path)[0]] == names


@pytest.mark.parametrize(
    "value, message",
    [
        (None, 'must be a string such as "song_01", got null'),
        (True, 'must be a string such as "song_01", got true'),
        (["a"], 'must be a string such as "song_01", got an array'),
        (1.5, 'must be a string, got the number 1.5; quote it: "idx": "1.5"'),
    ],
)
def test_non_string_idx(tmp_path, value, message):
    path = write_jsonl(tmp_path / "in.jsonl", {"idx": value, "gt_lyric": LYRIC})
    assert report(path)[0] == f"{path}:1: idx: {message}"


def test_missing_idx_and_bad_lyric_type(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", {"gt_lyric": ["[verse] a"]})
    assert report(path)[:2] == [
        f'{path}:1: idx: missing; add a unique name such as "idx": "song_01" (it names audios/{{idx}}.flac)',
        f'{path}:1: gt_lyric: must be a string such as "[intro-short] ; [verse] first line.second line ; [chorus] '
        '... ; [outro-short]", got an array',
    ]


def test_line_level_format_errors(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", '"just a string"', "{", b'{"idx": "\xff"}', "7")
    assert report(path)[:4] == [
        f"{path}:1: line: is the string 'just a string', expected an object like "
        '{"idx": "song_01", "gt_lyric": ...}',
        f"{path}:2: line: invalid JSON at column 2: unexpected end of data; each line must be one complete JSON object",
        f"{path}:3: line: is not valid UTF-8 (byte 10); save the file as UTF-8",
        f'{path}:4: line: is the number 7, expected an object like {{"idx": "song_01", "gt_lyric": ...}}',
    ]


def test_descriptions_must_be_a_string_but_null_is_absent(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", song("a", descriptions=None), song("b", descriptions=["pop"]))
    assert report(path)[0].endswith("(or null / left out), got an array")
    assert report(path)[0].startswith(f"{path}:2: descriptions: must be a string")


def test_relative_prompt_path_prefers_the_jsonl_folder_then_cwd(tmp_path):
    jsonl_dir, cwd = tmp_path / "jobs", tmp_path / "work"
    in_both = write_audio(jsonl_dir / "p.wav"), write_audio(cwd / "p.wav")
    only_cwd = write_audio(cwd / "sub" / "q.flac")
    absolute = write_audio(tmp_path / "abs.wav")
    path = write_jsonl(
        jsonl_dir / "in.jsonl",
        song("a", prompt_audio_path="p.wav"),
        song("b", prompt_audio_path="sub/q.flac"),
        song("c", prompt_audio_path=str(absolute)),
    )
    jobs, _ = load_jobs(path, cwd=cwd)
    assert [j.prompt_audio_path for j in jobs] == [in_both[0].resolve(), only_cwd.resolve(), absolute.resolve()]


def test_prompt_path_cwd_defaults_to_the_working_directory(tmp_path, monkeypatch):
    clip = write_audio(tmp_path / "work" / "clip.wav")
    (tmp_path / "jobs").mkdir()
    path = write_jsonl(tmp_path / "jobs" / "in.jsonl", song("a", prompt_audio_path="clip.wav"))
    monkeypatch.chdir(tmp_path / "work")
    assert load_jobs(path)[0][0].prompt_audio_path == clip.resolve()


def test_missing_prompt_names_every_path_tried(tmp_path):
    (tmp_path / "jobs").mkdir()
    path = write_jsonl(
        tmp_path / "jobs" / "in.jsonl",
        song("a", prompt_audio_path="gone.wav"),
        song("b", prompt_audio_path=str(tmp_path / "abs.wav")),
    )
    lines = report(path, cwd=tmp_path / "work")
    assert lines[:2] == [
        f"{path}:1: prompt_audio_path: 'gone.wav' not found; tried {tmp_path}/jobs/gone.wav, {tmp_path}/work/gone.wav. "
        "Relative paths are resolved against the jsonl's folder, then the working directory: fix the path",
        f"{path}:2: prompt_audio_path: '{tmp_path}/abs.wav' not found; tried {tmp_path}/abs.wav. "
        "Relative paths are resolved against the jsonl's folder, then the working directory: fix the path",
    ]


def test_m4a_and_aac_prompts_are_accepted_like_upstream(tmp_path):
    tone = (0.3 * np.sin(np.arange(48000) / 48000 * 2 * np.pi * 440)).astype(np.float32)[None]
    clips = [write_m4a(tmp_path / "p.m4a", tone, 48000), write_m4a(tmp_path / "p.aac", tone, 48000)]
    path = write_jsonl(tmp_path / "in.jsonl", song("a", prompt_audio_path="p.m4a"), song("b", prompt_audio_path="p.aac"))
    jobs, _ = load_jobs(path)
    assert [j.prompt_audio_path for j in jobs] == [c.resolve() for c in clips]


def test_unusable_prompt_files(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio")
    write_audio(tmp_path / "empty.wav", frames=0)
    (tmp_path / "folder").mkdir()
    path = write_jsonl(
        tmp_path / "in.jsonl",
        song("a", prompt_audio_path="notes.wav"),
        song("b", prompt_audio_path="empty.wav"),
        song("c", prompt_audio_path="folder"),
        song("d", prompt_audio_path=3),
        song("e", prompt_audio_path=""),
    )
    lines = report(path, cwd=tmp_path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}:1: prompt_audio_path: {re.escape(str(tmp_path))}/notes.wav is not readable audio "
        r"\(.*Format not recognised.*\); convert it to WAV or FLAC",
        lines[0],
    )
    assert lines[1] == (
        f"{path}:2: prompt_audio_path: {tmp_path}/empty.wav has no audio samples; use a music clip "
        "(the first 10 s are used)"
    )
    assert lines[2].startswith(f"{path}:3: prompt_audio_path: {tmp_path}/folder is not readable audio (")
    assert lines[3:5] == [
        f"{path}:4: prompt_audio_path: must be the path of an audio file (WAV, FLAC, ...), got the number 3",
        f"{path}:5: prompt_audio_path: must be the path of an audio file (WAV, FLAC, ...), got the string ''",
    ]


def test_prompt_path_with_auto_prompt_is_an_error(tmp_path):
    write_audio(tmp_path / "p.wav")
    path = write_jsonl(tmp_path / "in.jsonl", song("a", prompt_audio_path="p.wav", auto_prompt_audio_type="Pop"))
    assert report(path)[0] == (
        f"{path}:1: auto_prompt_audio_type: cannot be combined with prompt_audio_path (upstream rejects the pair); "
        "keep only one of them"
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("hiphop", f"unknown type 'hiphop'; did you mean 'Hip-Hop'? allowed (case-sensitive): {ALLOWED}"),
        ("r&b soul", f"unknown type 'r&b soul'; did you mean 'R&B/Soul'? allowed (case-sensitive): {ALLOWED}"),
        ("Polka", f"unknown type 'Polka'; allowed (case-sensitive): {ALLOWED}"),
        (["Pop"], f"must be a string, one of {ALLOWED}; got an array"),
    ],
)
def test_auto_prompt_type_must_be_known(tmp_path, value, message):
    path = write_jsonl(tmp_path / "in.jsonl", song("a", auto_prompt_audio_type=value))
    assert report(path)[0] == f"{path}:1: auto_prompt_audio_type: {message}"


def test_null_optional_fields_count_as_absent(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", song("a", prompt_audio_path=None, auto_prompt_audio_type=None))
    (job,), warnings = load_jobs(path)
    assert (job.prompt_audio_path, job.auto_prompt_audio_type, warnings) == (None, None, [])


def test_misspelt_field_names_warn_other_unknown_keys_pass(tmp_path):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        song("a", description="pop", Auto_Prompt_Type="Pop", note="keep me"),
        song("b", description="pop", descriptions="rock"),
    )
    jobs, warnings = load_jobs(path)
    assert [str(w) for w in warnings] == [
        f"{path}:1: description: unknown key, passed through unchanged; did you mean 'descriptions'?",
        f"{path}:1: Auto_Prompt_Type: unknown key, passed through unchanged; did you mean 'auto_prompt_audio_type'?",
    ]
    assert jobs[0].descriptions is None and jobs[0].item["note"] == "keep me"


def test_idx_that_clash_as_files_warn(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", song("Song"), song("mix"), song("song"), song("mix_vocal"))
    _, warnings = load_jobs(path)
    assert [str(w) for w in warnings] == [
        f"{path}:3: idx: 'song' differs from 'Song' (line 1) only in letter case; on macOS and Windows their audio "
        "files overwrite each other: rename one",
    ]


def test_stem_name_collision_is_an_error_with_separate(tmp_path):
    """Issue 10, item 7: idx `x` plus `x_vocal` under --separate was only a warning, then one file overwrote the other."""
    path = write_jsonl(tmp_path / "in.jsonl", song("mix"), song("mix_vocal"), song("mix_bgm"))
    with pytest.raises(JobsError) as e:
        load_jobs(path, gen_type="separate")
    assert [str(p) for p in e.value.problems] == [
        f"{path}:2: idx: with --separate, the vocal stem of 'mix' (line 1) is also written to audios/mix_vocal.flac "
        "and would overwrite this song: rename one",
        f"{path}:3: idx: with --separate, the bgm stem of 'mix' (line 1) is also written to audios/mix_bgm.flac "
        "and would overwrite this song: rename one",
    ]
    assert load_jobs(path, gen_type="vocal")[1] == []


def test_unusable_input_files(tmp_path):
    missing, folder = tmp_path / "nope.jsonl", tmp_path
    empty = write_jsonl(tmp_path / "empty.jsonl", "", "  ")
    assert report(missing) == [
        f"{missing}:0: file: not found (looked at {missing}); check the path of the input jsonl",
        f"1 error and 0 warnings in {missing}; fix them and run again.",
    ]
    assert report(folder)[0] == f"{folder}:0: file: is a directory; pass the .jsonl file itself"
    assert report(empty)[0] == f"{empty}:0: file: contains no jobs; write one JSON object per line"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_validation_never_writes_anything(tmp_path, monkeypatch):
    write_audio(tmp_path / "p.wav")
    good = write_jsonl(tmp_path / "good.jsonl", song("a", prompt_audio_path="p.wav"), song("b", gt_lyric="[x]"))
    bad = write_jsonl(tmp_path / "bad.jsonl", song("../a"), "{")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    load_jobs(good)
    for kwargs in ({}, {"strict": True}):
        with pytest.raises(JobsError):
            load_jobs(bad, **kwargs)
    with pytest.raises(JobsError):
        load_jobs(good, strict=True)
    assert snapshot(tmp_path) == before


def test_sample_jsonl_is_clean_and_covers_every_field_and_tag(tmp_path):
    sample = REPO / "sample" / "lyrics.jsonl"
    for cwd in (REPO, tmp_path):
        jobs, warnings = load_jobs(sample, strict=True, cwd=cwd)
        assert warnings == []
        assert [j.prompt_audio_path for j in jobs if j.prompt_audio_path] == [REPO / "sample" / "prompt.flac"]
    assert len(jobs) == 5
    assert {t for j in jobs for t in re.findall(r"\[[^\]]+\]", j.gt_lyric)} == set(STRUCTURE_TAGS)
    assert any(j.descriptions and not (j.prompt_audio_path or j.auto_prompt_audio_type) for j in jobs)
    assert any(j.auto_prompt_audio_type for j in jobs)
    assert any(not (j.descriptions or j.prompt_audio_path or j.auto_prompt_audio_type) for j in jobs)
    assert any(set(j.item) - {"idx", "gt_lyric", "descriptions", "prompt_audio_path", "auto_prompt_audio_type"}
               for j in jobs)
    info = soundfile.info(REPO / "sample" / "prompt.flac")
    assert (info.samplerate, info.channels, info.subtype, info.duration) == (48000, 2, "PCM_16", 10.0)
    assert (REPO / "sample" / "prompt.flac").stat().st_size < 1_000_000
