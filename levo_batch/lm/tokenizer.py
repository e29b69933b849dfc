"""The two Qwen2 text tokenizers of the LM's conditioners, built with `tokenizers` (no transformers at run time).

Upstream loads `third_party/Qwen2-7B` twice and adds different tags to each copy, so the same id (151646)
means `[verse]` for the lyrics and `[Musicality-very-high]` for the description: the two must stay separate
objects. Upstream's slow `Qwen2Tokenizer` also silently skips every merge line that starts with `#`, so runs
of `#` never merge; the checkpoints saw that tokenisation, so we drop those merges too.

v1 checkpoints (see `levo_batch.lm.config.LM_VERSIONS`) were trained before upstream added `.` as a special
lyric token and the description tags: their lyrics tokenizer has the structure tags only, and their
description tokenizer is plain Qwen2.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from levo_batch.text import DESCRIPTION_TAGS, STRUCTURE_TAGS

PAD_ID = 151643
IM_START = "<|im_start|>"
IM_START_ID = 151644
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenisation regex (the one its `tokenizer.json` ships)."""


class TextTokenizers:
    """Lyrics (`description` conditioner) and description (`type_info` conditioner) tokenizers."""

    def __init__(self, lyrics: Tokenizer, description: Tokenizer):
        self.lyrics = lyrics
        self.description = description
        self.structure_ids = tuple(lyrics.token_to_id(t) for t in STRUCTURE_TAGS)

    @classmethod
    def from_dir(cls, path: Path, version: str = "v2") -> "TextTokenizers":
        """From a Qwen2-7B tokenizer folder: `tokenizer.json`, else `vocab.json` + `merges.txt`."""
        path = Path(path)
        if version == "v1":
            return cls(_with_tags(_load_base(path), STRUCTURE_TAGS), _load_base(path))
        return cls(_with_tags(_load_base(path), (*STRUCTURE_TAGS, ".")),
                   _with_tags(_load_base(path), (*DESCRIPTION_TAGS, ".")))

    def encode_lyrics(self, text: str | None) -> list[int]:
        """Upstream's lyrics ids: `<|im_start|>` + text (just the marker for a null condition), no cut."""
        return _encode(self.lyrics, text)

    def encode_description(self, text: str | None) -> list[int]:
        return _encode(self.description, text)


def _encode(tok: Tokenizer, text: str | None) -> list[int]:
    return tok.encode(IM_START if text is None else IM_START + text, add_special_tokens=False).ids


def _with_tags(tok: Tokenizer, tags: tuple[str, ...]) -> Tokenizer:
    """Add `tags` as always-split special tokens, as upstream's `add_tokens(..., special_tokens=True)`."""
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tags])
    return tok


def _load_base(path: Path) -> Tokenizer:
    if (path / "tokenizer.json").is_file():
        spec = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        spec["model"]["merges"] = [m for m in spec["model"]["merges"] if not _hash_merge(m)]
        tok = Tokenizer.from_str(json.dumps(spec))
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tok = _from_vocab_merges(path / "vocab.json", path / "merges.txt")
    else:
        raise FileNotFoundError(
            f"no Qwen2 tokenizer in {path}: expected tokenizer.json, or vocab.json + merges.txt "
            f"(the third_party/Qwen2-7B folder of the SongGeneration runtime assets)"
        )
    for name, want in (("<|endoftext|>", PAD_ID), (IM_START, IM_START_ID)):
        if tok.token_to_id(name) != want:
            raise ValueError(
                f"{path}: {name} has id {tok.token_to_id(name)}, expected {want}; this is not the Qwen2 "
                f"tokenizer the LeVo checkpoints were trained with"
            )
    return tok


def _hash_merge(merge: str | list[str]) -> bool:
    """Merges are `"a b"` strings in older `tokenizer.json` files and `[a, b]` pairs in newer ones."""
    left = merge[0] if isinstance(merge, list) else merge
    return left.startswith("#")


def _from_vocab_merges(vocab_file: Path, merges_file: Path) -> Tokenizer:
    """Rebuild what `tokenizer.json` would hold, the way transformers converts a slow Qwen2Tokenizer."""
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [
        tuple(line.split(" "))
        for line in merges_file.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="")
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    return tok
