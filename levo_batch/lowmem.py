"""Upstream's automatic low-memory mode: which checkpoints switch to it, and at which device memory.

Upstream's generate.py measures the CUDA card (total memory less what its process has reserved, i.e. the
card's size at start-up: other processes are not counted) and takes its low-memory path when that figure is
at or below a threshold set per checkpoint folder name; folders it does not list never switch by themselves.
The low-memory path samples differently (temperature 0.9, top-k 50) and decodes the stems without the
prompt, so the same command renders other songs on a smaller card: we make the same decision, say so in the
first log line, and record it in every token fingerprint.

Without CUDA upstream does not run at all. Here an automatic decision without CUDA (Metal, CPU) is the
normal mode: Apple Silicon shares its memory with the system, and a figure comparable to upstream's does
not exist there; `--low_mem` forces the mode on any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .lm.config import folder_key

LOW_MEM_THRESHOLDS_GIB = {
    "songgeneration_base": 24.0,
    "songgeneration_base_new": 24.0,
    "songgeneration_base_full": 24.0,
    "songgeneration_large": 36.0,
    "songgeneration_v2_large": 32.0,
}
"""Upstream's thresholds (GiB: it divides bytes by 1024^3) by checkpoint folder name (see `folder_key`)."""

MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class MemoryMode:
    low_mem: bool
    reason: str

    def announce(self) -> str:
        return f"memory mode: {'low-memory' if self.low_mem else 'normal'} ({self.reason})"


def cuda_memory_gib() -> tuple[str, float] | None:
    """Upstream's figure on the current CUDA device, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(device).total_memory
    return f"cuda:{device}", (total - torch.cuda.memory_reserved(device)) / 2**30


def memory_mode(requested: str, ckpt_dir: Path | str,
                measure: Callable[[], tuple[str, float] | None] | None = None) -> MemoryMode:
    """`requested` is "on" (--low_mem), "off" (--no-low-mem) or "auto" (upstream's rule); `measure` gives
    (device, GiB), `cuda_memory_gib` by default."""
    if requested not in MODES:
        raise ValueError(f"low-memory mode must be one of {', '.join(MODES)}, got {requested!r}")
    if requested == "on":
        return MemoryMode(True, "--low_mem")
    if requested == "off":
        return MemoryMode(False, "--no-low-mem")
    key = folder_key(str(ckpt_dir))
    threshold = LOW_MEM_THRESHOLDS_GIB.get(key)
    if threshold is None:
        return MemoryMode(False, f"auto: upstream switches by itself only for the folders "
                                 f"{', '.join(LOW_MEM_THRESHOLDS_GIB)}; --low_mem forces it")
    figure = (measure or cuda_memory_gib)()
    if figure is None:
        return MemoryMode(False, "auto: no CUDA device, and upstream decides on CUDA memory only; "
                                 "--low_mem forces it (Metal, CPU)")
    device, gib = figure
    low = gib <= threshold
    return MemoryMode(low, f"auto: {gib:.1f} GiB on {device} {'<=' if low else '>'} {threshold:g} GiB, "
                           f"upstream's threshold for {key}; --low_mem / --no-low-mem force it")
