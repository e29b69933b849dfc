"""`levo-batch download`: fetch upstream's runtime assets and LM checkpoints from the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

from .runtime import RuntimePaths

RUNTIME_REPO = "lglg666/SongGeneration-Runtime"
"""Upstream's runtime bundle (`ckpt/` and `third_party/`); `tencent/SongGeneration` mirrors it."""

RUNTIME_FILES = ("ckpt/model_septoken/*", "ckpt/model_1rvq/*", "ckpt/vae/*", "third_party/Qwen2-7B/*",
                 "third_party/demucs/*")
"""Only what inference reads: the bundle also holds training leftovers (encode-s12k.pt, content-vec)."""

OFFICIAL_CHECKPOINTS = {
    "v2-large": "lglg666/SongGeneration-v2-large",
    "v2-medium": "lglg666/SongGeneration-v2-medium",
    "large": "lglg666/SongGeneration-large",
    "base-full": "lglg666/SongGeneration-base-full",
    "base-new": "lglg666/SongGeneration-base-new",
}
"""Official releases (`config.yaml` + `model.pt`); large, base-full and base-new are v1 (see README)."""

MLX_COMMUNITY_CHECKPOINTS = tuple(
    f"mlx-community/SongGeneration-{size}{precision}"
    for size in ("v2-medium", "v2-large") for precision in ("", "-4bit", "-8bit", "-bf16", "-fp32")
)
"""The public MLX conversions we load, by their hub names (the plain name is the bf16 one)."""

CHECKPOINTS = {**OFFICIAL_CHECKPOINTS, **{name: name for name in MLX_COMMUNITY_CHECKPOINTS}}

def missing_after_download(runtime: RuntimePaths) -> None:
    """A download that "succeeded" without the files (partial mirror, changed bundle) must not look fine."""
    from .assets import EVERYTHING, runtime_assets
    from .fetch import DownloadError

    missing = [a for a in runtime_assets(runtime, EVERYTHING, None) if not a.present and a.path != runtime.auto_prompt]
    if missing:
        raise DownloadError(f"{RUNTIME_REPO} did not provide {', '.join(str(a.path) for a in missing)}; retry, "
                            f"or download them by hand (see third_party/SongGeneration/README.md)")


def default_ckpt_dir(model: str) -> Path:
    """Official releases under upstream's folder names (which decide v1/v2 and the low-memory threshold),
    mlx-community conversions under their hub names (e.g. ckpt/SongGeneration-v2-large-4bit)."""
    if model in OFFICIAL_CHECKPOINTS:
        return Path("ckpt") / f"songgeneration_{model.replace('-', '_')}"
    return Path("ckpt") / model.split("/", 1)[1]


def download(runtime: RuntimePaths, model: str | None, ckpt_dir: Path | None) -> None:
    """Everything the sample album needs; raises `fetch.DownloadError` (one line) on any network failure."""
    from huggingface_hub import snapshot_download

    from .fetch import check_reachable, fetch_auto_prompt, hub_download, hub_endpoint

    check_reachable(hub_endpoint())
    runtime.root.mkdir(parents=True, exist_ok=True)
    print(f"runtime assets -> {runtime.root}")
    hub_download("the runtime assets", lambda: snapshot_download(
        RUNTIME_REPO, local_dir=runtime.root, allow_patterns=list(RUNTIME_FILES)))
    missing_after_download(runtime)
    if model is not None:
        target = ckpt_dir or default_ckpt_dir(model)
        print(f"{model} checkpoint -> {target}")
        hub_download(f"the {model} checkpoint", lambda: snapshot_download(CHECKPOINTS[model], local_dir=target))
    print(f"auto-prompt library -> {runtime.auto_prompt}")
    fetch_auto_prompt(runtime.auto_prompt)
