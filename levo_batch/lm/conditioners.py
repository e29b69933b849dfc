"""The LM's conditioning: host-side token preparation (numpy) and the embedding tables (MLX).

Upstream runs a classifier-free-guidance batch `[cond, null]` per song and prepends three conditions to
both transformer streams, in the fuser's order lyrics -> prompt -> description. Two names are swapped
upstream and kept here so that weights load by plain key mapping: the conditioner called `description`
embeds the *lyrics*, and `type_info` embeds the style *description*.

Masks are computed upstream but never reach the transformers, so padding positions are ordinary prefix
tokens; none are produced here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from levo_batch.lm.config import LMConfig
from levo_batch.lm.tokenizer import PAD_ID, TextTokenizers

MUSICALITY_HIGH = "[Musicality-very-high]"
NULL_DESCRIPTION_LOW = "[Musicality-very-low], ."
"""Upstream's CFG null branch swaps a very-high musicality description for this one instead of dropping it."""

log = logging.getLogger(__name__)

STRUCTURE_ID_BASE = 151645
"""Structure-embedding index of a section = its tag id minus this (so `[verse]` 151646 -> 1)."""


@dataclass
class CondInputs:
    """Token inputs of the conditioners for N rows (a song contributes [cond, null])."""

    lyric_ids: np.ndarray  # [N, lyrics_max_len] int32
    lyric_structure: np.ndarray  # [N, lyrics_max_len] int32
    description_ids: np.ndarray  # [N, description_max_len] int32
    prompt_codes: np.ndarray  # [N, code_depth, prompt_max_len - 1] int32


def condition_inputs(
    tok: TextTokenizers, cfg: LMConfig, lyrics: str, descriptions: str | None, prompt_tokens: np.ndarray | None,
    song: str | None = None,
) -> CondInputs:
    """Rows [cond, null] for one song; texts are already normalised by `levo_batch.text.lm_texts`.

    Text past the conditioners' lengths is cut, as upstream does; with `song` (its idx) that is also logged
    as a warning naming the song and the limit, where upstream warns too."""
    lyric_rows = [tok.encode_lyrics(lyrics), tok.encode_lyrics(None)]
    null_desc = NULL_DESCRIPTION_LOW if descriptions is not None and MUSICALITY_HIGH in descriptions else None
    desc_rows = [tok.encode_description(descriptions), tok.encode_description(null_desc)]
    if song is not None:
        _warn_if_cut(song, "lyrics", len(lyric_rows[0]), cfg.lyrics_max_len)
        _warn_if_cut(song, "description", len(desc_rows[0]), cfg.description_max_len)
    structure = [_structure_ids(ids, tok.structure_ids) for ids in lyric_rows]
    prompt = _prompt_conditioner_input(lm_prompt_codes(prompt_tokens, cfg), cfg)
    return CondInputs(
        lyric_ids=np.stack([_fit(r, cfg.lyrics_max_len, PAD_ID) for r in lyric_rows]),
        lyric_structure=np.stack([_fit(r, cfg.lyrics_max_len, 0) for r in structure]),
        description_ids=np.stack([_fit(r, cfg.description_max_len, PAD_ID) for r in desc_rows]),
        prompt_codes=np.stack([prompt, np.full_like(prompt, cfg.special_id)]),
    )


def lm_prompt_codes(prompt_tokens: np.ndarray | None, cfg: LMConfig) -> np.ndarray:
    """Upstream's `audio_qt_embs` `[code_depth, prompt_frames]`: rows cut or right-padded with the special id.

    A `[1, n]` (mixed-only) prompt leaves the other rows all special, which later blanks them entirely.
    """
    out = np.full((cfg.code_depth, cfg.prompt_frames), cfg.special_id, dtype=np.int32)
    if prompt_tokens is None:
        return out
    tokens = np.asarray(prompt_tokens)
    if tokens.ndim != 2 or tokens.shape[0] not in (1, cfg.code_depth):
        raise ValueError(
            f"prompt tokens must be [1, n] (mixed row) or [{cfg.code_depth}, n] int codes, got shape {tokens.shape}"
        )
    n = min(tokens.shape[1], cfg.prompt_frames)
    out[: tokens.shape[0], :n] = tokens[:, :n]
    return out


def banned_prompt_ids(prompt_tokens: np.ndarray | None, cfg: LMConfig) -> np.ndarray:
    """Codebook-0 ids of the prompt's mixed row, which upstream forbids at every step (sorted, int32)."""
    row = lm_prompt_codes(prompt_tokens, cfg)[0]
    return np.unique(row[row < cfg.code_size]).astype(np.int32)


def _prompt_conditioner_input(codes: np.ndarray, cfg: LMConfig) -> np.ndarray:
    """Prompt conditioner input: an EOS column before each row, rows starting with the special id blanked."""
    seq = np.concatenate([np.full((cfg.code_depth, 1), cfg.eos_id, dtype=np.int32), codes], axis=1)
    seq[codes[:, 0] == cfg.special_id] = cfg.special_id
    return np.stack([_fit(row, cfg.prompt_max_len - 1, cfg.special_id) for row in seq])


def _warn_if_cut(song: str, what: str, length: int, limit: int) -> None:
    """Upstream's rule: more tokens than the limit (its `<|im_start|>` marker included) are cut."""
    if length > limit:
        log.warning(f"song {song}: {what} too long: {length} tokens (<|im_start|> included) for the LM's limit "
                    f"of {limit}; the last {length - limit} are cut, as upstream does. Shorten the {what} to "
                    f"keep all of it")


def _structure_ids(ids: list[int], tags: tuple[int, ...]) -> list[int]:
    """Each tag's section index from the tag up to the next tag or the end of the text (before any cut)."""
    out = [0] * len(ids)
    section = 0
    for i, t in enumerate(ids):
        if t in tags:
            section = t - STRUCTURE_ID_BASE
        out[i] = section
    return out


def _fit(row, length: int, pad: int) -> np.ndarray:
    row = np.asarray(row, dtype=np.int32)[:length]
    return np.pad(row, (0, length - row.shape[0]), constant_values=pad)


class LyricsConditioner(nn.Module):
    """Upstream's `description` conditioner: token embedding plus the embedding of the enclosing section."""

    def __init__(self, vocab: int, structure_vocab: int, dim: int):
        super().__init__()
        self.output_proj = nn.Embedding(vocab, dim)
        self.structure_emb = nn.Embedding(structure_vocab, dim)

    def __call__(self, ids: mx.array, structure: mx.array) -> mx.array:
        return self.output_proj(ids) + self.structure_emb(structure)


class DescriptionConditioner(nn.Module):
    """Upstream's `type_info` conditioner: a plain token embedding."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.output_proj = nn.Embedding(vocab, dim)

    def __call__(self, ids: mx.array) -> mx.array:
        return self.output_proj(ids)


class PromptConditioner(nn.Module):
    """Upstream's `prompt_audio` conditioner: codebook 0 feeds stream 1, codebooks 1.. are summed for stream 2."""

    def __init__(self, code_size: int, code_depth: int, dim: int):
        super().__init__()
        self.emb = [nn.Embedding(code_size + 2, dim) for _ in range(code_depth)]
        self.EOT_emb = mx.zeros((1, dim))
        self.layer2_EOT_emb = mx.zeros((1, dim))

    def __call__(self, codes: mx.array) -> tuple[mx.array, mx.array]:
        n = codes.shape[0]
        first = self.emb[0](codes[:, 0])
        rest = self.emb[1](codes[:, 1])
        for k in range(2, len(self.emb)):
            rest = rest + self.emb[k](codes[:, k])
        eot1 = mx.broadcast_to(self.EOT_emb[None].astype(first.dtype), (n, 1, first.shape[-1]))
        eot2 = mx.broadcast_to(self.layer2_EOT_emb[None].astype(rest.dtype), (n, 1, rest.shape[-1]))
        return mx.concatenate([eot1, first], axis=1), mx.concatenate([eot2, rest], axis=1)


class ConditionProvider(nn.Module):
    """Holds the three conditioners under upstream's parameter names and builds the fused prefix."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.conditioners = {
            "description": LyricsConditioner(cfg.lyrics_vocab, cfg.structure_vocab, cfg.dim),
            "type_info": DescriptionConditioner(cfg.description_vocab, cfg.dim),
            "prompt_audio": PromptConditioner(cfg.code_size, cfg.code_depth, cfg.dim),
        }

    def prefix(self, inputs: CondInputs) -> tuple[mx.array, mx.array]:
        """The two prefix streams `[N, prefix_len, D]`: lyrics, prompt stream k, description.

        `inputs` may hold numpy or MLX arrays.
        """
        c = self.conditioners
        lyrics = c["description"](mx.array(inputs.lyric_ids), mx.array(inputs.lyric_structure))
        description = c["type_info"](mx.array(inputs.description_ids))
        prompt1, prompt2 = c["prompt_audio"](mx.array(inputs.prompt_codes))
        return (
            mx.concatenate([lyrics, prompt1, description], axis=1),
            mx.concatenate([lyrics, prompt2, description], axis=1),
        )
