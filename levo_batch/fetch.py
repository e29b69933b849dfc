"""Network side of `levo-batch download`: a reachability check first, one-line failures, and the auto-prompt
library, which upstream keeps outside the hub bundles.

Upstream publishes `tools/new_auto_prompt.pt` in its GitHub repository (tencent-ailab/SongGeneration) as a
Git LFS object; GitHub serves LFS content from media.githubusercontent.com. The pointer in the repository
gives the object's sha256 and size, which we verify before the file is put in place.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .atomic import atomic_write
from .errors import LevoError
from .store import file_sha256

AUTO_PROMPT_URL = "https://media.githubusercontent.com/media/tencent-ailab/SongGeneration/main/tools/new_auto_prompt.pt"
AUTO_PROMPT_SHA256 = "616dbe27c99ac8ce7447423b6baa102f8c19d35e35d9020f32ad27e9a52134e7"
AUTO_PROMPT_SIZE = 14959842
TIMEOUT_S = 15


class DownloadError(LevoError):
    """The hub or GitHub cannot be reached, or a download failed or came back wrong."""


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def check_reachable(url: str) -> None:
    """Fail in one line, before anything is fetched, when `url` cannot be reached (offline, proxy, DNS)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # the server answered: reachable
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"cannot reach {url} ({reason}); check your network connection or proxy "
                            f"(HTTPS_PROXY, HF_ENDPOINT) and retry") from e


def hub_download(what: str, fetch: Callable[[], object]) -> None:
    """Run a huggingface_hub download, turning its failures into one line."""
    try:
        fetch()
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, repo not found, disk)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"downloading {what} failed: {first}; retry (downloads resume where they stopped)") from e


def fetch_auto_prompt(dest: Path, url: str = AUTO_PROMPT_URL, sha256: str = AUTO_PROMPT_SHA256,
                      size: int = AUTO_PROMPT_SIZE) -> bool:
    """Put upstream's auto-prompt library at `dest` (verified by sha256); False when it is already there."""
    if dest.is_file() and dest.stat().st_size == size and file_sha256(dest) == sha256:
        return False
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"downloading the auto-prompt library from {url} failed "
                            f"({getattr(e, 'reason', e)}); retry, or copy upstream's tools/new_auto_prompt.pt "
                            f"to {dest}") from e
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DownloadError(f"the auto-prompt library from {url} is not upstream's file (sha256 {got[:16]}..., "
                            f"expected {sha256[:16]}...); nothing was written to {dest}")
    atomic_write(dest, lambda f: f.write(data))
    return True
