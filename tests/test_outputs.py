import json

import numpy as np
import pytest
import soundfile as sf

from levo_batch.audio import to_pcm16
from levo_batch.outputs import (
    audio_paths,
    is_done,
    output_item,
    output_jsonl_path,
    write_flac,
    write_output_jsonl,
)

# (float sample, int16 FFmpeg writes): x * 32768, round half to even, saturate.
CASES = [
    (0.0, 0),
    (0.5 / 32768, 0),
    (1.5 / 32768, 2),
    (2.5 / 32768, 2),
    (-0.5 / 32768, 0),
    (-1.5 / 32768, -2),
    (0.7 / 32768, 1),
    (-0.7 / 32768, -1),
    (0.25, 8192),
    (-0.25, -8192),
    (32766.5 / 32768, 32766),
    (1.0, 32767),
    (-1.0, -32768),
    (1.7, 32767),
    (-3.0, -32768),
    (1e9, 32767),
]


def test_pcm16_conversion_matches_ffmpeg():
    x = np.array([[c for c, _ in CASES]], dtype=np.float32)
    assert to_pcm16(x)[:, 0].tolist() == [q for _, q in CASES]


def test_flac_is_48k_stereo_16bit_with_exact_samples(tmp_path):
    left = np.array([c for c, _ in CASES], dtype=np.float32)
    audio = np.stack([left, -left])
    path = tmp_path / "audios" / "song.flac"
    write_flac(path, audio)
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
        "FLAC", "PCM_16", 48000, 2, len(CASES)
    )
    data, sr = sf.read(path, dtype="int16")
    expected = [q for _, q in CASES]
    assert data[:, 0].tolist() == expected
    assert data[:, 1].tolist() == to_pcm16(-left[None])[:, 0].tolist()
    assert [p.name for p in path.parent.iterdir()] == ["song.flac"]


def test_flac_float64_input_goes_through_float32_like_upstream(tmp_path):
    x = np.array([[0.1, -0.3, 0.999999]] * 2)
    write_flac(tmp_path / "a.flac", x)
    data, _ = sf.read(tmp_path / "a.flac", dtype="int16")
    assert data[:, 0].tolist() == np.clip(np.rint(x[0].astype(np.float32) * 32768), -32768, 32767).tolist()


def test_flac_rejects_bad_audio_without_writing(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(channels, samples\)"):
        write_flac(tmp_path / "a.flac", np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_flac(tmp_path / "a.flac", np.array([[0.0, np.nan]] * 2, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_audio_paths_and_is_done(tmp_path):
    paths = audio_paths(tmp_path, "7", ("main", "vocal", "bgm"))
    assert paths == {
        "main": tmp_path / "audios" / "7.flac",
        "vocal": tmp_path / "audios" / "7_vocal.flac",
        "bgm": tmp_path / "audios" / "7_bgm.flac",
    }
    assert not is_done(tmp_path, "7", ("main",))
    write_flac(paths["main"], np.zeros((2, 4), dtype=np.float32))
    assert is_done(tmp_path, "7", ("main",))
    assert not is_done(tmp_path, "7", ("main", "vocal", "bgm"))
    with pytest.raises(ValueError, match="unknown stems \\['drums'\\]"):
        audio_paths(tmp_path, "7", ("drums",))


def test_output_jsonl_keeps_upstream_double_extension(tmp_path):
    assert output_jsonl_path(tmp_path, "inputs/lyrics.jsonl") == tmp_path / "jsonl" / "lyrics.jsonl.jsonl"


def test_output_item_mirrors_upstream():
    item = {"idx": 3, "gt_lyric": "[verse] 你好", "descriptions": "female, pop", "wav_path": "old"}
    out = output_item(item, "out/run1", {"prompt_source": "auto"})
    assert list(out) == ["idx", "gt_lyric", "descriptions", "wav_path", "prompt_source"]
    assert out["idx"] == "3" and out["wav_path"] == "out/run1/audios/3.flac"
    assert item["idx"] == 3
    assert list(output_item({"gt_lyric": "x", "idx": "a"}, "/abs/dir")) == ["gt_lyric", "idx", "wav_path"]


def test_write_output_jsonl_matches_upstream_bytes(tmp_path):
    items = [
        output_item({"idx": "b", "gt_lyric": "[intro-short] ; [verse] 星星", "descriptions": "男声"}, "out"),
        output_item({"idx": "a", "gt_lyric": "hello", "auto_prompt_audio_type": "Pop", "x": 1.5}, "out"),
    ]
    path = output_jsonl_path(tmp_path, "lyrics.jsonl")
    write_output_jsonl(path, items)
    raw = path.read_bytes()
    assert raw == "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items).encode("utf-8")
    assert "星星".encode() in raw and b'"idx": "b", "gt_lyric"' in raw
    assert [json.loads(line) for line in raw.decode().splitlines()] == items
    assert [p.name for p in path.parent.iterdir()] == ["lyrics.jsonl.jsonl"]
