"""Which files a run needs (LM checkpoint, runtime assets) and whether they are there, checked without loading.

The same table serves the up-front check of `generate` (only the assets the jsonl's songs will use must
exist) and `levo-batch doctor`, which lists everything present or missing with the command that fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .preflight import Needs
from .runtime import RuntimePaths

EVERYTHING = Needs(lm=True, decoder=True, prompt_audio=True, auto_prompt=True)
DOWNLOAD_HINT = "levo-batch download --model v2-large --ckpt-dir {ckpt}"
RUNTIME_HINT = "levo-batch download --runtime-dir {root}"


@dataclass(frozen=True)
class Asset:
    what: str
    path: Path
    needed: bool
    """True when this run (these songs, these flags) reads the file."""
    hint: str

    @property
    def present(self) -> bool:
        return self.path.exists()


def runtime_assets(runtime: RuntimePaths, needs: Needs, ckpt_dir: Path | None) -> list[Asset]:
    """Every runtime file, marked with whether `needs` uses it. The tokenizer may come with the checkpoint
    (mlx-community conversions ship `qwen2_tokenizer/`)."""
    hint = RUNTIME_HINT.format(root=runtime.root)
    bundled = ckpt_dir is not None and (ckpt_dir / "qwen2_tokenizer").is_dir()
    encoders = needs.prompt_audio
    return [
        Asset("Qwen2 tokenizer", runtime.tokenizer_dir, needs.lm and not bundled, hint),
        Asset("septoken decoder weights", runtime.septoken, needs.decoder or encoders, hint),
        Asset("VAE config", runtime.vae_config, needs.decoder, hint),
        Asset("VAE weights", runtime.vae_weights, needs.decoder, hint),
        Asset("1rvq tokenizer checkpoint", runtime.rvq1, encoders, hint),
        Asset("htdemucs weights", runtime.htdemucs, encoders, hint),
        Asset("htdemucs config", runtime.htdemucs_yaml, encoders, hint),
        Asset("auto-prompt library", runtime.auto_prompt, needs.auto_prompt, hint),
    ]


def open_lm_checkpoint(ckpt_dir: Path, version: str | None = None):
    """The checkpoint's config and files (no weights read), or a one-line error naming the download command.
    `version` overrides the v1/v2 text conventions (`--lm-version`)."""
    from .lm.loading import open_checkpoint

    try:
        return open_checkpoint(ckpt_dir, version), None
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        hint = DOWNLOAD_HINT.format(ckpt=ckpt_dir)
        detail = e.args[0] if isinstance(e, KeyError) else e  # a KeyError's str() is its quoted repr
        return None, f"error: LM checkpoint: {detail}. Download one with `{hint}` (or pass its folder)"


def asset_problems(runtime: RuntimePaths, needs: Needs, ckpt_dir: Path | None) -> list[str]:
    return [f"error: {a.what} not found at {a.path}; fetch the runtime assets with `{a.hint}` or point "
            f"--runtime-dir / $LEVO_RUNTIME_DIR at them"
            for a in runtime_assets(runtime, needs, ckpt_dir) if a.needed and not a.present]


def doctor_lines(ckpt_dir: Path | None, runtime: RuntimePaths, needs: Needs) -> tuple[list[str], bool]:
    """`levo-batch doctor`: one line per asset (present / missing / not needed) and whether the run can go."""
    lines, ok = [], True
    if ckpt_dir is not None:
        ckpt, error = open_lm_checkpoint(ckpt_dir)
        if ckpt is not None:
            what = f"LM checkpoint ({ckpt.source_format}, max_dur {ckpt.config.max_dur:g} s)"
            lines.append(f"ok       {what}: {ckpt_dir}")
        else:
            ok = not needs.lm
            lines.append(f"{'MISSING' if needs.lm else 'unused '}  {error.removeprefix('error: ')}")
    for asset in runtime_assets(runtime, needs, ckpt_dir):
        if asset.present:
            lines.append(f"ok       {asset.what}: {asset.path}")
        elif asset.needed:
            ok = False
            lines.append(f"MISSING  {asset.what}: {asset.path}; fetch with `{asset.hint}`")
        else:
            lines.append(f"unused   {asset.what}: {asset.path} (not needed by these songs)")
    return lines, ok
