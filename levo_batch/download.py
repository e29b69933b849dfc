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

AUTO_PROMPT_HINT = (
    "The auto-prompt library tools/new_auto_prompt.pt is kept in upstream's GitHub repository (Git LFS): "
    "copy it to {path} to use auto_prompt_audio_type."
)


def default_ckpt_dir(model: str) -> Path:
    """Official releases under upstream's folder names (which decide v1/v2 and the low-memory threshold),
    mlx-community conversions under their hub names (e.g. ckpt/SongGeneration-v2-large-4bit)."""
    if model in OFFICIAL_CHECKPOINTS:
        return Path("ckpt") / f"songgeneration_{model.replace('-', '_')}"
    return Path("ckpt") / model.split("/", 1)[1]


def download(runtime: RuntimePaths, model: str | None, ckpt_dir: Path | None) -> None:
    from huggingface_hub import snapshot_download

    runtime.root.mkdir(parents=True, exist_ok=True)
    print(f"runtime assets -> {runtime.root}")
    snapshot_download(RUNTIME_REPO, local_dir=runtime.root, allow_patterns=list(RUNTIME_FILES))
    if model is not None:
        target = ckpt_dir or default_ckpt_dir(model)
        print(f"{model} checkpoint -> {target}")
        snapshot_download(CHECKPOINTS[model], local_dir=target)
    if not runtime.auto_prompt.exists():
        print(AUTO_PROMPT_HINT.format(path=runtime.auto_prompt))
