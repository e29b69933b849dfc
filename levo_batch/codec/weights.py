"""Reading the official checkpoints: lazy safetensors access and strict checks on the keys we use.

Upstream loads every checkpoint with `strict=False`, so a renamed or missing tensor silently keeps its random
init. We read only the tensors a module needs and fail loudly, naming the file, when one is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from safetensors import safe_open

from levo_batch.errors import first_few


class SafetensorsDict(Mapping[str, torch.Tensor]):
    """Read-only mapping over a .safetensors file that loads a tensor only when it is asked for.

    The official septoken file holds ~1.1 G parameters of which the decoder needs ~0.66 G; reading lazily keeps
    the unused MusicFM, `wte` and training heads out of memory.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"weights file {self.path} does not exist")
        self._file = safe_open(str(self.path), framework="pt")
        self._keys = frozenset(self._file.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __repr__(self) -> str:
        return str(self.path)


def geometry_beside(weights: str | Path, file_name: str) -> dict | None:
    """The JSON geometry file `file_name` in the folder of `weights`, or None when there is none.

    Official runtimes ship no such files (the real geometry is each module's default); non-standard checkpoints,
    such as the tiny random ones of the tests, describe their sizes in one.
    """
    path = Path(weights).parent / file_name
    return json.loads(path.read_text()) if path.is_file() else None


def take(sd: Mapping[str, torch.Tensor], prefix: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """`{name: sd[prefix + name]}` for every name, or one KeyError listing all missing keys and the source."""
    names = list(names)
    missing = [prefix + n for n in names if prefix + n not in sd]
    if missing:
        raise KeyError(
            f"{source_name(sd)} lacks {len(missing)} tensor(s) the decoder needs: {first_few(missing, 8)}. Is it the "
            "official ckpt/model_septoken/model_2.safetensors? Re-download it if it is truncated."
        )
    return {n: sd[prefix + n] for n in names}


def source_name(sd: Mapping[str, torch.Tensor]) -> str:
    """The file behind a state dict for error messages (in-memory dicts have none)."""
    return repr(sd) if isinstance(sd, SafetensorsDict) else "the given state dict"
