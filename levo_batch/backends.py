"""The production stages: MLX LM, PyTorch decoder and prompt encoders, built lazily from the CLI settings.

Heavy frameworks are imported only when a phase actually has work, so validation, --dry-run and --help stay
instant and a decode-only run never loads the LM.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from .runtime import RuntimePaths

UPSTREAM_LOW_MEM_SAMPLING = {"temperature": 0.9, "top_k": 50}
"""Upstream's low-memory path samples differently from its default (SamplingParams' defaults)."""
KV_CACHE_BITS = {"bf16": None, "int8": 8}
"""`--kv-cache` choices: the model's own precision, or 8-bit caches (see `levo_batch.lm.cache`)."""


@dataclass
class GenerationSettings:
    ckpt_dir: Path
    runtime: RuntimePaths
    gen_type: str = "mixed"
    low_mem: bool = False
    batch_size: int | None = None
    kv_cache: str = "bf16"
    decoder_batch: int = 4
    max_duration: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    cfg_coef: float | None = None
    greedy: bool = False
    checkpoint_every: int = 100
    device: str | None = None
    lm_dtype: str | None = None
    decoder_compile: bool = False

    def lm_load_dtype(self) -> str | None:
        """bf16 on an MLX GPU (upstream runs its LM in fp16 on CUDA), stored precision on the CPU."""
        if self.lm_dtype is not None:
            return self.lm_dtype
        import mlx.core as mx

        return "bf16" if mx.default_device() == mx.gpu else None

    def sampling(self):
        """Upstream's sampling (low-memory variant with --low_mem), overridden by explicit flags; an unset
        cfg_coef is the checkpoint's."""
        from .lm.sampling import SamplingParams

        explicit = {"temperature": self.temperature, "top_k": self.top_k, "cfg_coef": self.cfg_coef}
        base = UPSTREAM_LOW_MEM_SAMPLING if self.low_mem else {}
        chosen = {**base, **{k: v for k, v in explicit.items() if v is not None}}
        return SamplingParams(**chosen, greedy=self.greedy)


class DefaultStages:
    def __init__(self, settings: GenerationSettings):
        self.settings = settings
        self._generator = None

    def prompts(self):
        from .prompts.prepare import PromptPreparer

        return PromptPreparer(self.settings.runtime, device=self.settings.device)

    def generator(self):
        from .lm.generate import MLXTokenGenerator
        from .lm.loading import load_lm
        from .lm.tokenizer import TextTokenizers

        s = self.settings
        loaded = load_lm(s.ckpt_dir, dtype=s.lm_load_dtype())
        tokenizers = TextTokenizers.from_dir(self.tokenizer_dir())
        self._generator = MLXTokenGenerator(
            loaded.model, loaded.config, tokenizers, model_id=f"{loaded.model_id}:{loaded.dtype}",
            sampling=s.sampling(), batch_size=s.batch_size, kv_bits=KV_CACHE_BITS[s.kv_cache],
            max_duration=s.max_duration, checkpoint_every=s.checkpoint_every)
        return self._generator

    def tokenizer_dir(self) -> Path:
        """The runtime's Qwen2 tokenizer, else the copy that mlx-community conversions ship beside the weights."""
        runtime = self.settings.runtime
        bundled = self.settings.ckpt_dir / "qwen2_tokenizer"
        if not runtime.tokenizer_dir.exists() and bundled.is_dir():
            return bundled
        return runtime.require(runtime.tokenizer_dir, "Qwen2 tokenizer")

    def decoder(self):
        from .decoder.septoken import SepTokenDecoder

        s = self.settings
        if self._generator is not None:
            self._generator = None
            gc.collect()
            import mlx.core as mx

            mx.clear_cache()
        return SepTokenDecoder.load(s.runtime, device=s.device, batch_size=1 if s.low_mem else s.decoder_batch,
                                    prompt_on_stems=not s.low_mem, compile=s.decoder_compile)
