"""Next-column choice: upstream's logit processing, and seeded sampling that does not depend on the batch.

Processing (upstream `LmModel._sample_next_token`, in this order): classifier-free guidance
`uncond + (cond - uncond) * coef`; a repetition penalty dividing by `penalty` (float32, regardless of sign)
every id below `code_size` *present* in the song's last `window` written columns; the prompt ban (codebook 0
only, -inf). Greedy takes the argmax. Sampling keeps, for codebook 0, the ids whose logit is >= the k-th
largest (ties kept, like upstream's `probs >= kth`) and draws from `softmax(logits / temperature)` restricted
to them; codebooks 1.. use k = 1, i.e. the argmax.

Randomness. Upstream draws with `torch.multinomial`, whose stream cannot be reproduced outside torch and
depends on everything drawn before. Here a draw is the Gumbel-max trick, `argmax(logits / T + g)` over the
kept ids, which has exactly the distribution of sampling from the renormalised softmax. The noise `g` for
song seed `seed`, step `s` and id `i` is `-log(-log(u))` with `u` from a counter-based integer hash
(lowbias32 rounds over uint32) of `(seed, s, i)`: a pure function of those three numbers. So a song's
tokens never depend on its batch mates or batch size, and resuming needs no generator state: the written
columns and the step are enough.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import mlx.core as mx

_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


@dataclass(frozen=True)
class SamplingParams:
    """The field defaults are upstream `generate.py`'s (its `--low_mem` path samples differently:
    `levo_batch.stages.UPSTREAM_LOW_MEM_SAMPLING`). `cfg_coef` None takes the checkpoint's (`LMConfig.cfg_coef`).
    `low_mem` records that upstream's low-memory mode chose the defaults: the mode is decided per machine
    (`levo_batch.lowmem`), so a token record says which one made it.
    `penalty_window` 0 penalises every column written so far, like upstream's `pool[-0:]` slice. Top-p is not
    supported: upstream never uses it.
    """

    temperature: float = 0.8
    top_k: int = 5000
    greedy: bool = False
    cfg_coef: float | None = None
    penalty: float = 1.1
    penalty_window: int = 50
    low_mem: bool = False

    def __post_init__(self):
        if self.top_k < 0 or self.penalty_window < 0 or self.penalty <= 0:
            raise ValueError(f"invalid sampling parameters {self}: top_k and penalty_window must be >= 0, penalty > 0")

    @property
    def argmax(self) -> bool:
        """Upstream takes the argmax when sampling is off or the temperature is not positive."""
        return self.greedy or self.temperature <= 0

    def with_cfg_coef(self, default: float) -> "SamplingParams":
        return self if self.cfg_coef is not None else replace(self, cfg_coef=default)

    def fingerprint(self) -> dict:
        return {"noise": "gumbel-lowbias32-v1", **asdict(self)}


def _mix(x: mx.array) -> mx.array:
    """lowbias32 (C. Wellons): a full-avalanche uint32 -> uint32 permutation."""
    x = x ^ (x >> 16)
    x = x * mx.array(_M1, dtype=mx.uint32)
    x = x ^ (x >> 15)
    x = x * mx.array(_M2, dtype=mx.uint32)
    return x ^ (x >> 16)


def seed_words(seed: int) -> tuple[int, int]:
    """A song seed (up to 64 bits) as the two uint32 words the hash consumes."""
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF


def gumbel_noise(seeds: mx.array, steps: mx.array, n: int) -> mx.array:
    """Standard Gumbel noise `[B, n]` from `seeds` `[B, 2]` uint32 and `steps` `[B]`, a pure function of both."""
    golden = mx.array(_GOLDEN, dtype=mx.uint32)
    key = _mix(_mix(seeds[:, 0] ^ golden) ^ seeds[:, 1])
    key = _mix(key ^ _mix(steps.astype(mx.uint32) + golden))
    ids = mx.arange(n, dtype=mx.uint32)[None, :]
    bits = _mix(key[:, None] ^ _mix(ids * golden))
    u = ((bits >> 8).astype(mx.float32) + 0.5) * (1.0 / (1 << 24))
    return -mx.log(-mx.log(u))


def process_logits(
    logits: mx.array, presence: mx.array, banned: mx.array, cfg_coef: float, penalty: float, code_size: int
) -> mx.array:
    """Raw logits `[2B, Q, V]` (rows cond, null per song) -> processed `[B, Q, V]` float32.

    `presence` `[B, Q, V]` marks ids in the penalty window; `banned` `[B, V]` the codebook-0 prompt ids.
    """
    rows, depth, vocab = logits.shape
    pair = logits.astype(mx.float32).reshape(rows // 2, 2, depth, vocab)
    cond, uncond = pair[:, 0], pair[:, 1]
    out = uncond + (cond - uncond) * cfg_coef
    penalised = presence & (mx.arange(vocab) < code_size)
    out = mx.where(penalised, out / mx.array(penalty, dtype=mx.float32), out)
    first = mx.where(banned, -mx.inf, out[:, 0])
    return mx.concatenate([first[:, None], out[:, 1:]], axis=1)


def choose(logits: mx.array, seeds: mx.array, steps: mx.array, params: SamplingParams) -> mx.array:
    """Processed logits `[B, Q, V]` -> token ids `[B, Q]` (int32)."""
    best = mx.argmax(logits, axis=-1).astype(mx.int32)
    if params.argmax:
        return best
    first = logits[:, 0]
    vocab = first.shape[-1]
    scores = first / params.temperature + gumbel_noise(seeds, steps, vocab)
    if 0 < params.top_k < vocab:
        # The k-th largest logit straight from one partition (no top-k copy and reduction after it).
        split = vocab - params.top_k
        kth = mx.partition(first, split, axis=-1)[:, split : split + 1]
        scores = mx.where(first >= kth, scores, -mx.inf)
    drawn = mx.argmax(scores, axis=-1).astype(mx.int32)
    return mx.concatenate([drawn[:, None], best[:, 1:]], axis=1)
