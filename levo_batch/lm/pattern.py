"""Upstream's delay pattern between timesteps `[code_depth, T]` and pattern columns `[code_depth, T + max_delay + 1]`.

Column 0 is all `special`; code (q, t) sits at column `1 + delay_q + t`; every other cell is `special`.
With LeVo 2's delays `[0, 250, 250]` codebooks 1 and 2 start 250 columns after codebook 0, so the LM runs
`T + 250` steps for `T` timesteps. Host-side numpy: these run once per song, never per step.
"""

from __future__ import annotations

import numpy as np


def num_columns(timesteps: int, delays: tuple[int, ...]) -> int:
    """Pattern columns including the leading all-special column."""
    return timesteps + max(delays) + 1


def revert_pattern(columns: np.ndarray, timesteps: int, delays: tuple[int, ...]) -> np.ndarray:
    """Pattern columns (at least `T + max_delay + 1`) -> codes `[code_depth, T]`."""
    return np.stack([columns[q, 1 + d : 1 + d + timesteps] for q, d in enumerate(delays)])


def cut_at_eos(codes: np.ndarray, eos: int) -> np.ndarray:
    """Upstream's `CodecLM` cut: every row stops at the earliest timestep holding EOS in any codebook."""
    hits = np.nonzero(codes == eos)[1]
    return codes[:, : hits.min()] if hits.size else codes
