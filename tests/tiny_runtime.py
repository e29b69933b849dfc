"""A complete runtime folder in upstream's layout, with the tiny random models of the golden fixtures.

Every file has the official name and format (safetensors, the VAE's `{'state_dict'}` torch file, htdemucs'
state dict + yaml, the auto-prompt library saved with `torch.save`); the only additions are the JSON files
that give tiny geometries the weights cannot tell (attention heads, htdemucs widths).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from fixture_meta import decoder_geometry
from safetensors.torch import load_file

from levo_batch.runtime import RuntimePaths
from levo_batch.text import AUTO_PROMPT_TYPES

DEMUCS = dict(channels=4, bottom_channels=16, t_layers=1, t_heads=2, dconv_comp=2)
"""Shrinks htdemucs (the rest of its hyper-parameters stay the real ones)."""


def build(root: Path, fixtures: Path, *, seed: int = 0, genres: tuple[str, ...] = AUTO_PROMPT_TYPES) -> RuntimePaths:
    """`genres`: the auto-prompt library's keys (4 entries of 300 frames per genre and language)."""
    from levo_batch.codec.septoken_encoder import CONFIG_FILE as ENCODER_CONFIG_FILE
    from levo_batch.decoder.estimator import CONFIG_FILE
    from levo_batch.prompts.prepare import DEMUCS_CONFIG_FILE
    from levo_batch.prompts.separation import HTDEMUCS_HPARAMS

    rt = RuntimePaths(Path(root))
    decoder_tiny, encoder_tiny = fixtures / "decoder_tiny", fixtures / "encoder_tiny"
    shutil.copytree(fixtures / "qwen2_tokenizer", rt.tokenizer_dir)
    for src, dst in ((decoder_tiny / "septoken_model.safetensors", rt.septoken),
                     (encoder_tiny / "rvq1_model.safetensors", rt.rvq1),
                     (decoder_tiny / "vae_config.json", rt.vae_config)):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    (rt.septoken.parent / CONFIG_FILE).write_text(json.dumps(decoder_geometry()))
    shutil.copyfile(encoder_tiny / "w2v2_config_tiny.json", rt.septoken.parent / ENCODER_CONFIG_FILE)
    torch.save({"state_dict": load_file(decoder_tiny / "vae.safetensors")}, rt.vae_weights)

    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    rt.htdemucs.parent.mkdir(parents=True)
    torch.save(HTDemucs(**dict(HTDEMUCS_HPARAMS, **DEMUCS)).state_dict(), rt.htdemucs)
    rt.htdemucs_yaml.write_text("models: ['955717e8']\n")
    (rt.htdemucs.parent / DEMUCS_CONFIG_FILE).write_text(json.dumps(DEMUCS))

    g = torch.Generator().manual_seed(seed)
    library = {genre: {lang: [torch.randint(0, 16384, (1, 3, 300), generator=g) for _ in range(4)]
                       for lang in ("zh", "en")} for genre in genres}
    rt.auto_prompt.parent.mkdir(parents=True)
    torch.save(library, rt.auto_prompt)
    return rt
