"""Shared test helpers: where the golden fixtures live, and fixtures several test modules read."""

import json
from pathlib import Path

import numpy as np
import pytest
from fixture_meta import FIXTURES, encoder_meta


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"golden fixtures not found at {FIXTURES} (set LEVO_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def encode_case(fixtures) -> dict:
    """encoder_tiny's recorded prompt encode (audio, mel, hidden states, codes)."""
    return dict(np.load(fixtures / "encoder_tiny" / encoder_meta()["file"]))


@pytest.fixture(scope="session")
def w2v2(fixtures) -> dict:
    """The tiny MusicFM conformer config (heads cannot be read off the weights)."""
    return json.loads((fixtures / "encoder_tiny" / "w2v2_config_tiny.json").read_text())


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the module: on 2 busy cores torch's thread pool spin-waits and collapses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
