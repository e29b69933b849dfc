"""Issue 10, item 10: `download` fails in one line when offline, never reports unfetched assets as fine, and
fetches upstream's auto-prompt library (verified); `doctor` lists what a jsonl needs. No network is used."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error

import pytest

from levo_batch import fetch
from levo_batch.cli import main
from levo_batch.fetch import DownloadError, fetch_auto_prompt

LYRIC = "[intro-short] ; [verse] Hello there.Small song ; [outro-short]"


def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_offline_download_fails_in_one_line_before_fetching(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(fetch.urllib.request, "urlopen", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("must not be called"))
    assert main(["download", "--runtime-dir", str(tmp_path / "rt")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("error: cannot reach https://") and "name resolution" in captured.err
    assert "runtime assets ->" not in captured.out and not (tmp_path / "rt").exists()


def test_hub_failures_and_empty_downloads_are_one_line_errors(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(fetch, "check_reachable", lambda url: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: None)
    assert main(["download", "--runtime-dir", str(tmp_path / "rt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: lglg666/SongGeneration-Runtime did not provide ") and err.count("\n") == 1

    def broken(*a, **k):
        raise OSError("Connection reset by peer\nlong details")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    assert main(["download", "--runtime-dir", str(tmp_path / "rt")]) == 2
    assert capsys.readouterr().err == ("error: downloading the runtime assets failed: Connection reset by peer; "
                                       "retry (downloads resume where they stopped)\n")


class Served:
    def __init__(self, data: bytes):
        self.data, self.urls = data, []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        return io.BytesIO(self.data)


def test_auto_prompt_library_is_fetched_from_upstream_and_verified(tmp_path, monkeypatch):
    data = b"library bytes"
    served = Served(data)
    monkeypatch.setattr(fetch.urllib.request, "urlopen", served)
    dest = tmp_path / "tools" / "new_auto_prompt.pt"
    digest = hashlib.sha256(data).hexdigest()
    assert fetch_auto_prompt(dest, sha256=digest, size=len(data)) and dest.read_bytes() == data
    assert not fetch_auto_prompt(dest, sha256=digest, size=len(data))  # already there: nothing fetched
    assert served.urls == [fetch.AUTO_PROMPT_URL]
    assert "tencent-ailab/SongGeneration" in fetch.AUTO_PROMPT_URL and fetch.AUTO_PROMPT_URL.endswith(
        "tools/new_auto_prompt.pt")
    with pytest.raises(DownloadError, match=r"is not upstream's file .* nothing was written"):
        fetch_auto_prompt(tmp_path / "other.pt", sha256="0" * 64, size=len(data))
    assert not (tmp_path / "other.pt").exists()


def test_doctor_lists_what_the_jsonl_needs(tmp_path, fixtures, capsys):
    import tiny_runtime
    from lm_checkpoints import write_official_checkpoint

    runtime = tiny_runtime.build(tmp_path / "rt", fixtures)
    runtime.auto_prompt.unlink()
    runtime.htdemucs.unlink()
    ckpt = write_official_checkpoint(tmp_path / "ck")
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC}) + "\n")
    assert main(["doctor", str(ckpt), str(plain), "--runtime-dir", str(runtime.root)]) == 0
    out = capsys.readouterr().out
    assert f"ok       LM checkpoint (official, max_dur 150 s): {ckpt}" in out
    assert f"unused   auto-prompt library: {runtime.auto_prompt} (not needed by these songs)" in out
    assert out.endswith("ready\n")
    auto = tmp_path / "auto.jsonl"
    auto.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC, "auto_prompt_audio_type": "Pop"}) + "\n")
    assert main(["doctor", str(ckpt), str(auto), "--runtime-dir", str(runtime.root)]) == 2
    out = capsys.readouterr().out
    assert f"MISSING  auto-prompt library: {runtime.auto_prompt}; fetch with `levo-batch download" in out
    assert "htdemucs weights" in out and "MISSING  htdemucs" not in out
