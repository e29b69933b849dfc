"""Where upstream's downloaded runtime assets live.

Users download the runtime folder of the `tencent/SongGeneration` hub repo into `third_party/SongGeneration/`
(see its README). The layout below mirrors that download, so the same folder works for upstream and for us.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUNTIME = Path("third_party") / "SongGeneration"
RUNTIME_ENV = "LEVO_RUNTIME_DIR"


@dataclass(frozen=True)
class RuntimePaths:
    root: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> "RuntimePaths":
        """Explicit path, else $LEVO_RUNTIME_DIR, else ./third_party/SongGeneration."""
        chosen = root or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME
        return cls(Path(chosen).expanduser().resolve())

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "third_party" / "Qwen2-7B"

    @property
    def septoken(self) -> Path:
        return self.root / "ckpt" / "model_septoken" / "model_2.safetensors"

    @property
    def rvq1(self) -> Path:
        return self.root / "ckpt" / "model_1rvq" / "model_2_fixed.safetensors"

    @property
    def vae_config(self) -> Path:
        return self.root / "ckpt" / "vae" / "stable_audio_1920_vae.json"

    @property
    def vae_weights(self) -> Path:
        return self.root / "ckpt" / "vae" / "autoencoder_music_1320k.ckpt"

    @property
    def htdemucs(self) -> Path:
        return self.root / "third_party" / "demucs" / "ckpt" / "htdemucs.pth"

    @property
    def htdemucs_yaml(self) -> Path:
        return self.root / "third_party" / "demucs" / "ckpt" / "htdemucs.yaml"

    @property
    def auto_prompt(self) -> Path:
        return self.root / "tools" / "new_auto_prompt.pt"

    def require(self, path: Path, what: str) -> Path:
        """Fail with the download hint instead of a bare FileNotFoundError deep inside a loader."""
        if not path.exists():
            raise FileNotFoundError(
                f"{what} not found at {path}. Download the runtime assets into {self.root} "
                f"(`levo-batch download`, see third_party/SongGeneration/README.md) or point "
                f"--runtime-dir / ${RUNTIME_ENV} at them."
            )
        return path
