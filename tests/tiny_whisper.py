"""A tiny multilingual Whisper in CTranslate2's format, written like a converted release (model.bin,
vocabulary.json, tokenizer.json), so faster-whisper loads and runs it exactly as it runs a real model.

The token layout is Whisper's: text tokens (one of them the empty string, which is how CTranslate2 tells a
multilingual vocabulary), `<|endoftext|>`, `<|startoftranscript|>`, the language tokens, the task and control
tokens, then the timestamps, 51866 entries in all. The weights are random except for a planted chain: the
decoder's layers add nothing to the residual stream and each chain token's embedding points the output
projection at its successor, so whatever the audio, the model "sings" `<|0.00|> hello <|1.00|>` and stops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB_SIZE = 51866
TEXT_TOKENS = 50257
N_MELS, AUDIO_POSITIONS, TEXT_POSITIONS = 80, 1500, 448
WORD = "hello"
CHAIN = ["<|transcribe|>", "<|0.00|>", WORD, "<|1.00|>", "<|endoftext|>"]
"""Each token's most likely successor is the next one in this list."""


def vocabulary() -> list[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    text = [WORD, ""] + [f"w{i}" for i in range(TEXT_TOKENS - 2)]
    control = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in _LANGUAGE_CODES),
               "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
               "<|notimestamps|>"]
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(VOCAB_SIZE - len(text) - len(control))]
    return text + control + stamps


def write_tiny_whisper(folder: Path, width: int = 16, heads: int = 2, seed: int = 0) -> Path:
    from ctranslate2.specs import WhisperSpec
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    rng = np.random.default_rng(seed)
    tokens = vocabulary()
    ids = {token: i for i, token in enumerate(tokens)}

    def w(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, np.float32)

    def norm(spec) -> None:
        spec.gamma, spec.beta = np.ones(width, np.float32), zeros(width)

    def ffn(spec, out_scale: float) -> None:
        norm(spec.layer_norm)
        spec.linear_0.weight, spec.linear_0.bias = w(4 * width, width), w(4 * width)
        spec.linear_1.weight, spec.linear_1.bias = w(width, 4 * width, scale=out_scale), zeros(width)

    def attention(spec, fused: bool, out_scale: float) -> None:
        norm(spec.layer_norm)
        shapes = [3 * width, width] if fused else [width, 2 * width, width]
        for linear, rows in zip(spec.linear, shapes):
            linear.weight, linear.bias = w(rows, width), zeros(rows)
        spec.linear[-1].weight *= out_scale

    spec = WhisperSpec(1, heads, 1, heads)
    enc, dec = spec.encoder, spec.decoder
    enc.conv1.weight, enc.conv1.bias = w(width, N_MELS, 3), w(width)
    enc.conv2.weight, enc.conv2.bias = w(width, width, 3), w(width)
    enc.position_encodings.encodings = w(AUDIO_POSITIONS, width)
    norm(enc.layer_norm)
    attention(enc.layer[0].self_attention, fused=True, out_scale=1.0)
    ffn(enc.layer[0].ffn, out_scale=1.0)

    embeddings, projection = w(VOCAB_SIZE, width, scale=0.01), w(VOCAB_SIZE, width, scale=0.01)
    for k, (token, successor) in enumerate(zip(CHAIN, CHAIN[1:])):
        embeddings[ids[token]] = np.eye(width, dtype=np.float32)[k]
        projection[ids[successor]] = 10 * np.eye(width, dtype=np.float32)[k]
    dec.embeddings.weight, dec.projection.weight = embeddings, projection
    dec.position_encodings.encodings = zeros(TEXT_POSITIONS, width)
    norm(dec.layer_norm)
    attention(dec.layer[0].self_attention, fused=True, out_scale=0.0)
    attention(dec.layer[0].attention, fused=False, out_scale=0.0)
    ffn(dec.layer[0].ffn, out_scale=0.0)

    spec.register_vocabulary(tokens)
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [ids["<|endoftext|>"]]
    spec.config.lang_ids = [ids[f"<|{code}|>"] for code in _LANGUAGE_CODES]
    spec.config.alignment_heads = [(0, h) for h in range(heads)]
    spec.validate()
    spec.optimize()
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))

    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens) if t}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(tokens[TEXT_TOKENS:])
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder
