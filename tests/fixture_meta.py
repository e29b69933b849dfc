"""Where the golden fixtures live and what their own metadata says (case lists, geometry, lengths).

Tests take every fixture constant from here, never from a literal, so the suite passes unchanged on any fixture
set the same recorders produce (another seed, other tiny sizes, other case names). Readable at import time, for
`pytest.mark.parametrize` over the recorded cases.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np

FIXTURES = Path(os.environ.get("LEVO_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
"""The fixture root: `$LEVO_FIXTURES`, else ../shared/fixtures beside the repository."""


@cache
def lm_cases() -> dict:
    """lm_tiny/cases.json: global facts (`generation`, `special_ids`, ...) and `jobs`, one per recorded song."""
    return json.loads((FIXTURES / "lm_tiny" / "cases.json").read_text())


def lm_arrays(name: str):
    """The arrays recorded for LM job `name` (its `case_<job>.npz`)."""
    return np.load(FIXTURES / "lm_tiny" / f"case_{name}.npz")


@cache
def decoder_meta() -> dict:
    """decoder_tiny/config.json: tiny geometry (`septoken`), decode settings (`code2sound`), `cases`."""
    return json.loads((FIXTURES / "decoder_tiny" / "config.json").read_text())


def decoder_geometry() -> dict:
    """The tiny flow transformer's GPT-2 sizes, as `levo_decoder.json` states them."""
    gpt2 = decoder_meta()["septoken"]["GPT2Config"]
    return {key: gpt2[key] for key in ("n_positions", "n_layer", "n_head", "n_embd", "n_inner")}


def decoder_cases(*, windows: str = "any", duration: str = "default", prompt: bool = False) -> list[dict]:
    """Recorded decoder cases by property: `windows` "one" (a single flow window), "several" or "any";
    `duration` "default" (upstream's 40-s windows) or "other"; with or without prompt audio."""
    meta = decoder_meta()
    out = []
    for case in meta["cases"]:
        n = max(d["n_flow_windows"] for d in case["decodes"])
        if windows == "one" and n != 1 or windows == "several" and n == 1:
            continue
        if (case["code2sound_duration"] == meta["code2sound"]["duration_default"]) != (duration == "default"):
            continue
        if (case["prompt_seconds"] is not None) != prompt:
            continue
        out.append(case)
    return out


def decoder_case(**properties) -> dict:
    """The first recorded decoder case with these properties (see `decoder_cases`)."""
    found = decoder_cases(**properties)
    assert found, f"decoder_tiny records no case with {properties}"
    return found[0]


def decoder_case_with(array: str) -> dict:
    """The recorded decoder case whose file holds `array` (some debug arrays are recorded for one case only)."""
    found = [case for case in decoder_meta()["cases"] if array in case["arrays"]]
    assert found, f"decoder_tiny records {array} in no case"
    return found[0]


@cache
def encoder_meta() -> dict:
    """encoder_tiny/encoder_config.json: the case `file`, layers used, MusicFM calls, array shapes."""
    return json.loads((FIXTURES / "encoder_tiny" / "encoder_config.json").read_text())


def decoder_arrays(case: dict):
    """The arrays recorded for a decoder case (an entry of `decoder_meta()["cases"]`)."""
    return np.load(FIXTURES / "decoder_tiny" / case["file"])
