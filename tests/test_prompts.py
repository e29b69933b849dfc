"""PromptPreparer end to end on tiny random weights laid out as the runtime download."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("demucs")
import tiny_runtime  # noqa: E402
from audio_files import load_prompt_audio  # noqa: E402

from levo_batch.audio import resample  # noqa: E402
from levo_batch.errors import PromptError  # noqa: E402
from levo_batch.jobs import Job  # noqa: E402
from levo_batch.prompts.prepare import PromptPreparer  # noqa: E402
from levo_batch.prompts.separation import HTDEMUCS_HPARAMS  # noqa: E402
from levo_batch.runtime import RuntimePaths  # noqa: E402

TINY_DEMUCS = dict(HTDEMUCS_HPARAMS, **tiny_runtime.DEMUCS)
EN_LYRIC = "[verse] walking down the road tonight ; [chorus] we sing"


@pytest.fixture(scope="module")
def runtime(fixtures, tmp_path_factory) -> RuntimePaths:
    """The official runtime layout, with an auto-prompt library of two genres (4 entries of 300 frames each)."""
    return tiny_runtime.build(tmp_path_factory.mktemp("runtime"), fixtures, genres=("Pop", "Auto"))


@pytest.fixture(scope="module")
def preparer(runtime, fixtures, tmp_path_factory) -> PromptPreparer:
    config = json.loads((fixtures / "encoder_tiny" / "w2v2_config_tiny.json").read_text())
    return PromptPreparer(runtime, device="cpu", cache_dir=tmp_path_factory.mktemp("cache"),
                          encoder_config=config, demucs_hparams=TINY_DEMUCS)


def _job(prompt_audio_path: Path | None = None, auto: str | None = None, lyric: str = EN_LYRIC) -> Job:
    return Job(idx="s1", line=1, gt_lyric=lyric, descriptions=None, prompt_audio_path=prompt_audio_path,
               auto_prompt_audio_type=auto, item={"idx": "s1"})


def _clip(path: Path, seconds: float, sr: int = 48000, channels: int = 2, seed: int = 0) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.4 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
    x = x + 0.05 * rng.standard_normal((channels, t.size))
    sf.write(str(path), x.T.astype(np.float32), sr, subtype="PCM_16")
    return path


def test_no_prompt_loads_nothing(runtime, tmp_path):
    fresh = PromptPreparer(runtime, device="cpu", cache_dir=tmp_path)
    prompt = fresh.prepare(_job(), seed=3)
    assert prompt.tokens is None and prompt.audio is None and prompt.info == {}
    assert fresh._library is None and fresh._separator is None and fresh._encoders is None


def test_auto_prompt_is_tokens_only(runtime, tmp_path):
    fresh = PromptPreparer(runtime, device="cpu", cache_dir=tmp_path)
    prompt = fresh.prepare(_job(auto="Auto"), seed=11)
    index = int(np.random.default_rng(11).integers(4))
    assert prompt.info == {"auto_prompt": {"genre": "Auto", "lang": "en", "index": index}}
    assert prompt.tokens.shape == (3, 300) and prompt.tokens.dtype == np.int64 and prompt.audio is None
    assert fresh.prepare(_job(auto="Auto"), seed=11).info == prompt.info
    assert fresh._separator is None and fresh._encoders is None
    with pytest.raises(PromptError, match=r"has no genre 'Jazz'"):
        fresh.prepare(_job(auto="Jazz"), seed=1)


def test_prompt_audio_tokens_and_stems(preparer, tmp_path, monkeypatch):
    path = _clip(tmp_path / "ref.flac", 3.0)
    rvq1, sep = preparer.encoders
    seen = {}

    def spy(name, encode):
        def wrapped(*stems):
            seen[name] = ([s.numpy().copy() for s in stems], encode(*stems))
            return seen[name][1]
        monkeypatch.setattr(encoders[name], "encode", wrapped)

    encoders = {"rvq1": rvq1, "sep": sep}
    spy("rvq1", rvq1.encode)
    spy("sep", sep.encode)
    prompt = preparer.prepare(_job(path), seed=1)

    full = load_prompt_audio(path)
    vocal44 = preparer.separator.vocals(*_read(path))
    vocal = resample(torch.from_numpy(vocal44), 44100, 48000)[:, :144000].numpy()
    assert prompt.audio.vocal.shape == prompt.audio.bgm.shape == (2, 144000)
    assert prompt.audio.vocal.dtype == np.float32
    np.testing.assert_array_equal(prompt.audio.vocal, vocal)
    np.testing.assert_array_equal(prompt.audio.bgm, full - vocal)  # bgm = mixture - vocal, not other stems
    (mix_in,), row0 = seen["rvq1"]
    (vocal_in, bgm_in), (row1, row2) = seen["sep"]
    np.testing.assert_array_equal(mix_in, full)
    np.testing.assert_array_equal(vocal_in, vocal)
    np.testing.assert_array_equal(bgm_in, full - vocal)
    assert prompt.tokens.shape == (3, 76) and prompt.tokens.dtype == np.int64  # int(3 s * 25) + 1
    np.testing.assert_array_equal(prompt.tokens, torch.stack([row0, row1, row2]).numpy())
    assert prompt.info["prompt_audio"]["path"] == str(path)
    assert preparer.encoders[0] is rvq1 and preparer.encoders[1] is sep  # built once, reused


def test_release_drops_models_and_reloads_on_demand(runtime, fixtures, tmp_path):
    config = json.loads((fixtures / "encoder_tiny" / "w2v2_config_tiny.json").read_text())
    fresh = PromptPreparer(runtime, device="cpu", cache_dir=tmp_path, encoder_config=config,
                           demucs_hparams=TINY_DEMUCS)
    separator, encoders = fresh.separator, fresh.encoders
    fresh.release()
    assert fresh._separator is None and fresh._encoders is None
    assert fresh.separator is not separator and fresh.encoders is not encoders


def test_same_audio_under_another_name_hits_the_cache(preparer, tmp_path, monkeypatch):
    path = _clip(tmp_path / "a.wav", 2.0, seed=5)
    _, vocal, _, _ = preparer.stems(path)
    copy = tmp_path / "b.flac"
    sf.write(str(copy), sf.read(str(path))[0], 48000, subtype="PCM_16")
    monkeypatch.setattr(preparer.separator, "_separate", lambda *a, **k: pytest.fail("separated twice"))
    np.testing.assert_array_equal(preparer.stems(copy)[1], vocal)


def test_long_mono_prompt_is_cut_to_10s_and_made_stereo(preparer, tmp_path):
    path = _clip(tmp_path / "long.wav", 10.5, sr=44100, channels=1)
    full, vocal, bgm, info = preparer.stems(path)
    assert full.shape == vocal.shape == bgm.shape == (2, 480000)
    np.testing.assert_array_equal(full, load_prompt_audio(path))
    np.testing.assert_array_equal(full[0], full[1])
    np.testing.assert_array_equal(bgm, full - vocal)
    assert info["prompt_audio"]["path"] == str(path)


def _read(path):
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T.copy(), sr


def test_prompt_audio_errors(preparer, tmp_path):
    cases = {
        "missing": (tmp_path / "missing.wav", r"prompt audio: audio file .*missing\.wav does not exist"),
        "junk": (tmp_path / "junk.mp3", r"prompt audio: cannot read audio file .*junk\.mp3: "),
        "empty": (tmp_path / "empty.wav", r"prompt audio: audio file .*empty\.wav contains no samples"),
        "short": (tmp_path / "short.wav", r"prompt audio .*short\.wav is 0\.50 s long; give at least 1 s"),
        "silent": (tmp_path / "silent.wav", r"prompt audio .*silent\.wav is silent \(below -80 dBFS, or its"),
        "cancel": (tmp_path / "cancel.wav", r"cancel\.wav is silent \(below -80 dBFS, or its channels cancel out\)"),
    }
    cases["junk"][0].write_bytes(b"\x00\x01 definitely not an mp3" * 20)
    sf.write(str(cases["empty"][0]), np.zeros((0, 2), np.float32), 48000)
    _clip(cases["short"][0], 0.5)
    sf.write(str(cases["silent"][0]), np.full((96000, 2), 3e-5, np.float32), 48000)  # DC + 1 LSB: silence
    wave = np.sin(np.linspace(0, 600, 96000)).astype(np.float32)
    sf.write(str(cases["cancel"][0]), np.stack([wave, -wave], axis=1), 48000)  # PCM16: cancels to < 1 LSB
    for path, message in cases.values():
        with pytest.raises(PromptError, match=message):
            preparer.prepare(_job(path), seed=0)
