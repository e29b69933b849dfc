"""Upstream's automatic low-memory decision, with faked CUDA memory figures (no GPU needed)."""

import json

import pytest

from levo_batch import lowmem
from levo_batch.cli import main
from levo_batch.lowmem import LOW_MEM_THRESHOLDS_GIB, memory_mode

LYRIC = "[verse] hello world ; [chorus] sing it"


def card(gib):
    return lambda: ("cuda:0", gib)


def no_cuda():
    return None


def never():
    raise AssertionError("the memory figure must not be read")


@pytest.mark.parametrize("folder, threshold", [("songgeneration_base", 24), ("songgeneration_base_new", 24),
                                               ("songgeneration_base_full", 24), ("songgeneration_large", 36),
                                               ("songgeneration_v2_large", 32)])
def test_upstream_thresholds_at_or_below_switch_to_low_memory(folder, threshold):
    assert LOW_MEM_THRESHOLDS_GIB[folder] == threshold
    assert memory_mode("auto", f"ckpt/{folder}", card(threshold)).low_mem
    assert memory_mode("auto", f"ckpt/{folder}", card(threshold - 0.5)).low_mem
    assert not memory_mode("auto", f"ckpt/{folder}", card(threshold + 0.1)).low_mem


def test_folder_names_compare_like_upstream():
    """Last component, lower case, '-' as '_'. A trailing slash is ignored here; upstream's `split("/")[-1]`
    would see an empty name there and never switch."""
    mode = memory_mode("auto", "/models/SongGeneration-v2-Large/", card(23.6))
    assert mode.low_mem
    assert mode.announce() == ("memory mode: low-memory (auto: 23.6 GiB on cuda:0 <= 32 GiB, upstream's threshold "
                               "for songgeneration_v2_large; --low_mem / --no-low-mem force it)")


def test_unlisted_folders_never_switch_by_themselves():
    for folder in ("songgeneration_v2_medium", "SongGeneration-v2-large-4bit", "my_model"):
        mode = memory_mode("auto", folder, never)
        assert not mode.low_mem and "--low_mem forces it" in mode.reason


def test_without_cuda_auto_is_the_normal_mode():
    mode = memory_mode("auto", "songgeneration_v2_large", no_cuda)
    assert not mode.low_mem
    assert mode.announce().startswith("memory mode: normal (auto: no CUDA device")


def test_flags_force_the_mode_without_measuring():
    assert memory_mode("on", "anything", never) == lowmem.MemoryMode(True, "--low_mem")
    assert memory_mode("off", "songgeneration_v2_large", never) == lowmem.MemoryMode(False, "--no-low-mem")
    with pytest.raises(ValueError, match="one of auto, on, off"):
        memory_mode("yes", "x")


@pytest.mark.parametrize("flags, gib, low", [([], 23.6, True), ([], 80.0, False), (["--no-low-mem"], 23.6, False),
                                             (["--low_mem"], 80.0, True)])
def test_cli_announces_the_mode_first_and_records_it_in_the_token_fingerprint(tmp_path, monkeypatch,
                                                                             flags, gib, low):
    import levo_batch.pipeline as pipeline
    from levo_batch.pipeline import Summary

    seen = {}

    def fake_run(opts, stages):
        seen["settings"], seen["banner"] = stages.settings, opts.banner
        return Summary()

    monkeypatch.setattr(lowmem, "cuda_memory_gib", card(gib))
    monkeypatch.setattr(pipeline, "run", fake_run)
    jobs = tmp_path / "in.jsonl"
    jobs.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC}) + "\n")
    ckpt = tmp_path / "songgeneration_v2_large"
    ckpt.mkdir()
    assert main(["generate", str(ckpt), str(jobs), str(tmp_path / "out"), *flags]) == 0
    first = seen["banner"][0]  # the pipeline logs the banner first once its checks pass
    assert first.startswith(f"memory mode: {'low-memory' if low else 'normal'} (")
    settings = seen["settings"]
    assert settings.low_mem is low
    sampling = settings.sampling()
    assert sampling.fingerprint()["low_mem"] is low
    assert (sampling.temperature, sampling.top_k) == ((0.9, 50) if low else (0.8, 5000))
