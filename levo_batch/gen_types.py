"""Upstream's generation types (`generate.sh` and its --bgm / --vocal / --separate) and all that follows from one.

Every stage asks this table rather than comparing names: what the LM sees, which decoder passes run and
which file each writes, whether prompt audio conditions the decoder, and the output files a finished song has.
"""

from __future__ import annotations

from dataclasses import dataclass

STEM_SUFFIX = {"main": "", "vocal": "_vocal", "bgm": "_bgm"}
"""Decoded stem -> file suffix: `{idx}.flac`, `{idx}_vocal.flac`, `{idx}_bgm.flac`."""


@dataclass(frozen=True)
class GenType:
    name: str
    lm_mode: str
    """What the LM is conditioned on: "bgm" (lyrics replaced, pure-music tags) or "song". Types of one mode
    share their token records: vocal and separate differ from mixed only at decoding."""
    decodes: tuple[tuple[str, str], ...]
    """(output stem, decode kind) per decoder pass, in decode order."""
    decoder_prompt: bool
    """Whether prompt audio conditions the decoder; upstream's `generate()` uses it for mixed and separate only."""

    @property
    def stems(self) -> tuple[str, ...]:
        """The stems a finished song has on disk, in `STEM_SUFFIX` order."""
        decoded = {stem for stem, _ in self.decodes}
        return tuple(stem for stem in STEM_SUFFIX if stem in decoded)

    @property
    def extra_suffixes(self) -> tuple[str, ...]:
        """File suffixes besides the main `{idx}.flac`: another idx that ends in one would collide."""
        return tuple(STEM_SUFFIX[stem] for stem in self.stems if STEM_SUFFIX[stem])


GEN_TYPES = {t.name: t for t in (
    GenType("mixed", "song", (("main", "mixed"),), decoder_prompt=True),
    GenType("bgm", "bgm", (("main", "bgm"),), decoder_prompt=False),
    GenType("vocal", "song", (("main", "vocal"),), decoder_prompt=False),
    GenType("separate", "song", (("vocal", "vocal"), ("bgm", "bgm"), ("main", "mixed")), decoder_prompt=True),
)}
"""Name -> GenType; "mixed" is the default, the others are named by generate.sh's flags."""

FLAG_ORDER = ("separate", "bgm", "vocal")
"""generate.sh tests its flags in this order and the last match wins, whatever their order on the command line."""
