"""htdemucs vocal separation: upstream's recipe, loading the runtime's file layout, content-hash cache."""

import random
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("demucs")
from demucs.apply import BagOfModels, apply_model  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402

import tiny_runtime  # noqa: E402
from levo_batch.prompts.separation import HTDEMUCS_HPARAMS, SeparationError, Separator  # noqa: E402

TINY = dict(HTDEMUCS_HPARAMS, **tiny_runtime.DEMUCS)
CPU = torch.device("cpu")


def _write_model(dirpath, hparams=TINY, seed=0):
    """A random htdemucs in the runtime's layout: plain state dict `.pth` + upstream's one-line `.yaml`."""
    torch.manual_seed(seed)
    model = HTDemucs(**hparams)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    dirpath.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dirpath / "htdemucs.pth")
    (dirpath / "htdemucs.yaml").write_text("models: ['htdemucs']\n")
    return dirpath / "htdemucs.pth", dirpath / "htdemucs.yaml"


def _clip(seconds=2.0, sr=48000, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal((2, t.size))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return _write_model(tmp_path_factory.mktemp("demucs"))


def test_recipe_matches_demucs_bag_as_upstream_calls_it(model_files):
    sep = Separator.load(*model_files, device=CPU, hparams=TINY)
    mix = _clip(sr=44100)
    ours = sep._separate(mix, 44100, seed=5)
    # Upstream: BagOfModels of the one model, standardise by the mono mix, shifts=1 / split / 25 % overlap.
    bag = BagOfModels([sep.model])
    wav = torch.from_numpy(mix)
    ref = wav.mean(0)
    random.seed(5)
    out = apply_model(bag, ((wav - ref.mean()) / ref.std())[None], shifts=1, split=True, overlap=0.25)
    vocal = out[0, 3] * ref.std() + ref.mean()
    expected = vocal / max(1.01 * vocal.abs().max().item(), 1)
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, sep._separate(mix, 44100, seed=6))  # the seed drives demucs' time shift


def test_vocals_are_16bit_stereo_44k_and_restore_python_random(model_files):
    sep = Separator.load(*model_files, device=CPU, hparams=TINY)
    random.seed(99)
    expected_next = random.random()
    random.seed(99)
    mono = _clip(seconds=1.5)[:1]
    vocal = sep.vocals(mono, 48000)
    assert random.random() == expected_next
    assert vocal.shape == (2, 66150) and vocal.dtype == np.float32
    np.testing.assert_array_equal(vocal * 32768, np.round(vocal * 32768))
    assert np.abs(vocal).max() > 0
    np.testing.assert_array_equal(vocal, sep.vocals(mono, 48000))  # reproducible without a cache


def test_content_hash_cache(model_files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    sep = Separator.load(*model_files, device=CPU, cache_dir=cache, hparams=TINY)
    mix = _clip()
    first = sep.vocals(mix, 48000)
    entries = sorted(cache.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".flac"

    def boom(*_a, **_k):
        raise AssertionError("separated again despite a cached stem")

    monkeypatch.setattr(sep, "_separate", boom)
    np.testing.assert_array_equal(sep.vocals(mix.copy(), 48000), first)
    with pytest.raises(AssertionError, match="separated again"):
        sep.vocals(mix * 0.5, 48000)  # other content, other key
    with pytest.raises(AssertionError, match="separated again"):
        sep.vocals(mix, 44100)  # same samples at another rate are another signal
    monkeypatch.undo()
    other = Separator.load(*_write_model(tmp_path / "other", seed=1), device=CPU, cache_dir=cache, hparams=TINY)
    assert other.model_id != sep.model_id
    assert not np.array_equal(other.vocals(mix, 48000), first)
    assert len(list(cache.iterdir())) == 2


def test_real_geometry_builds():
    model = HTDemucs(**HTDEMUCS_HPARAMS)
    assert model.sources[3] == "vocal" and model.samplerate == 44100 and float(model.segment) == 7.8
    assert sum(p.numel() for p in model.parameters()) == 41_984_456


def test_load_errors(model_files, tmp_path, monkeypatch):
    pth, yaml_path = model_files
    pickled = tmp_path / "package.pth"
    torch.save({"klass": HTDemucs, "state": {}}, pickled)
    with pytest.raises(SeparationError, match=r"cannot load .*package\.pth as a plain state dict .*htdemucs\.pth"):
        Separator.load(pickled, yaml_path, device=CPU)
    with pytest.raises(SeparationError, match=r"htdemucs\.pth does not match the htdemucs architecture: .*re-download"):
        Separator.load(pth, yaml_path, device=CPU)  # tiny weights, real geometry
    monkeypatch.setitem(sys.modules, "demucs.htdemucs", None)
    with pytest.raises(SeparationError, match=r"needs the `demucs` package .*pip install demucs"):
        Separator.load(pth, yaml_path, device=CPU, hparams=TINY)
