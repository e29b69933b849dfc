"""Auto-prompt library: safe loading, npz cache, language and seeded entry choice."""

import os

import numpy as np
import pytest
import torch

from levo_batch.errors import PromptError
from levo_batch.prompts.autoprompt import AutoPromptError, AutoPromptLibrary

GENRES = ("Pop", "R&B/Soul", "Auto")
EN_LYRIC = "[verse] hello there my old friend ; [chorus] sing it loud"
ZH_LYRIC = "[verse] 我们一起唱歌 ; [chorus] 天空很蓝"


def _library() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        genre: {
            lang: [torch.randint(0, 16384, (1, 3, 250 + i), generator=g) for i in range(n)]
            for lang, n in (("zh", 5), ("en", 7))
        }
        for genre in GENRES
    }


@pytest.fixture
def lib_path(tmp_path):
    path = tmp_path / "tools" / "new_auto_prompt.pt"
    path.parent.mkdir()
    torch.save(_library(), path)
    return path


def test_choice_language_tokens_and_info(lib_path):
    lib = AutoPromptLibrary.load(lib_path)
    raw = _library()
    tokens, info = lib.choose("R&B/Soul", ZH_LYRIC, seed=123)
    index = info["auto_prompt"]["index"]
    assert info == {"auto_prompt": {"genre": "R&B/Soul", "lang": "zh", "index": index}}
    assert 0 <= index < 5
    assert tokens.dtype == np.int64 and tokens.shape == (3, 250 + index)
    np.testing.assert_array_equal(tokens, raw["R&B/Soul"]["zh"][index][0].numpy())
    tokens, info = lib.choose("Auto", EN_LYRIC, seed=123)
    assert info["auto_prompt"]["lang"] == "en" and info["auto_prompt"]["genre"] == "Auto"
    np.testing.assert_array_equal(tokens, raw["Auto"]["en"][info["auto_prompt"]["index"]][0].numpy())


def test_choice_is_seeded(lib_path):
    lib = AutoPromptLibrary.load(lib_path)
    picks = [lib.choose("Pop", EN_LYRIC, seed=s)[1]["auto_prompt"]["index"] for s in range(40)]
    assert picks == [lib.choose("Pop", EN_LYRIC, seed=s)[1]["auto_prompt"]["index"] for s in range(40)]
    assert picks[0] == int(np.random.default_rng(0).integers(7))
    assert len(set(picks)) == 7  # every entry is reachable
    big = 2**63 - 1  # song seeds are 63-bit
    assert lib.choose("Pop", EN_LYRIC, seed=big) == lib.choose("Pop", EN_LYRIC, seed=big)


def test_npz_cache_written_once_and_preferred_when_newer(lib_path):
    cache = lib_path.with_suffix(".npz")
    first = AutoPromptLibrary.load(lib_path)
    assert first.source == lib_path and cache.is_file()
    second = AutoPromptLibrary.load(lib_path)
    assert second.source == cache
    for genre in GENRES:
        for lang in ("zh", "en"):
            assert len(second.entries[genre][lang]) == len(first.entries[genre][lang])
            for a, b in zip(first.entries[genre][lang], second.entries[genre][lang]):
                np.testing.assert_array_equal(a, b)
    assert first.choose("Pop", ZH_LYRIC, 7)[1] == second.choose("Pop", ZH_LYRIC, 7)[1]
    # A newer .pt (re-downloaded) wins over the stale cache and refreshes it.
    torch.save({"Pop": {"en": [torch.zeros(1, 3, 4, dtype=torch.long)], "zh": []}}, lib_path)
    stamp = lib_path.stat().st_mtime - 10
    os.utime(cache, (stamp, stamp))
    third = AutoPromptLibrary.load(lib_path)
    assert third.source == lib_path and set(third.entries) == {"Pop"}
    assert AutoPromptLibrary.load(lib_path).source == cache
    # The cache alone is enough (e.g. the .pt removed after conversion).
    lib_path.unlink()
    assert AutoPromptLibrary.load(lib_path).choose("Pop", EN_LYRIC, 1)[0].shape == (3, 4)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "new_auto_prompt.pt"
    torch.save({"Pop": {"en": [_Exploit(str(marker))]}}, path)
    message = r"refusing to load .*new_auto_prompt\.pt: it is not a plain tensor library"
    with pytest.raises(AutoPromptError, match=message):
        AutoPromptLibrary.load(path)
    assert not marker.exists()
    assert not path.with_suffix(".npz").exists()


def test_errors(tmp_path, lib_path):
    with pytest.raises(AutoPromptError, match=r"auto-prompt library .*missing\.pt not found.*git lfs pull"):
        AutoPromptLibrary.load(tmp_path / "missing.pt")
    lfs = tmp_path / "lfs.pt"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:616d\nsize 14959842\n")
    with pytest.raises(AutoPromptError, match=r"lfs\.pt is a Git LFS pointer, not the library: run `git lfs pull`"):
        AutoPromptLibrary.load(lfs)
    bad = tmp_path / "bad.pt"
    torch.save({"Pop": {"en": [torch.zeros(3, 10, dtype=torch.long)]}}, bad)
    message = r"bad\.pt: 'Pop'/'en'\[0\] is not an integer tensor of shape \(1, 3, T\)"
    with pytest.raises(AutoPromptError, match=message):
        AutoPromptLibrary.load(bad)
    torch.save({"Pop": [torch.zeros(1, 3, 10, dtype=torch.long)]}, bad)
    with pytest.raises(AutoPromptError, match=r"genre 'Pop' maps to list, expected a dict of languages"):
        AutoPromptLibrary.load(bad)
    lib = AutoPromptLibrary.load(lib_path)
    with pytest.raises(PromptError, match=r"has no genre 'Jazz' \(it has: Auto, Pop, R&B/Soul\)"):
        lib.choose("Jazz", EN_LYRIC, 0)
    sparse = tmp_path / "sparse.pt"
    torch.save({"Pop": {"en": [torch.zeros(1, 3, 4, dtype=torch.long)]}}, sparse)
    with pytest.raises(PromptError, match=r"has no 'zh' prompts for genre 'Pop'"):
        AutoPromptLibrary.load(sparse).choose("Pop", ZH_LYRIC, 0)
