"""The production stages (`contracts.Stages`): MLX LM, PyTorch decoder and prompt encoders, built lazily from the
CLI settings.

Heavy frameworks are imported only when a phase actually has work, so validation, --dry-run and --help stay
instant and a decode-only run never loads the LM.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from pathlib import Path

from .runtime import RuntimePaths

NOT_LM_SETTINGS = {"ckpt_dir", "runtime", "batch_size", "checkpoint_every", "decoder_batch",
                   "decoder_compile", "device", "temperature", "top_k", "cfg_coef", "greedy", "max_duration",
                   "lm_dtype"}
"""Settings that never change a song's tokens, or enter the provenance recipe resolved (the checkpoint by content,
sampling and duration with their defaults filled in). Every other field of
`GenerationSettings`, including any added later, is part of the recipe by default."""

UPSTREAM_LOW_MEM_SAMPLING = {"temperature": 0.9, "top_k": 50}
"""Upstream's low-memory path samples differently from its default (SamplingParams' defaults)."""
LOW_MEM_DECODER_BATCH = 1
"""Upstream's low-memory path decodes one window at a time, whatever --decoder-batch says."""
KV_CACHE_BITS = {"auto": None, "int8": 8}
"""`--kv-cache` choices: the LM's own precision, or 8-bit caches (see `levo_batch.lm.cache`)."""
LM_DTYPES = ("bf16", "fp16", "fp32")
"""`--lm-dtype` choices (names `levo_batch.lm.loading.DTYPES` maps)."""
GPU_LM_DTYPE = "fp16"
"""The LM's precision on a GPU unless `--lm-dtype` says otherwise: upstream's, and measured about ten times
closer to float32 logits than bf16 (README, "LM precision"; `bench/lm_precision.py`)."""


@dataclass
class GenerationSettings:
    ckpt_dir: Path
    runtime: RuntimePaths
    low_mem: bool = False
    batch_size: int | None = None
    kv_cache: str = "auto"
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
    lm_version: str | None = None

    def decoder_batch_size(self) -> int:
        return LOW_MEM_DECODER_BATCH if self.low_mem else self.decoder_batch

    def lm_load_dtype(self) -> str | None:
        """`GPU_LM_DTYPE` on an MLX GPU; on the CPU the checkpoint's stored precision (fp16 and bf16 matmuls
        are slow there)."""
        if self.lm_dtype is not None:
            return self.lm_dtype
        import mlx.core as mx

        return GPU_LM_DTYPE if mx.default_device() == mx.gpu else None

    def sampling(self):
        """Upstream's sampling (low-memory variant with --low_mem), overridden by explicit flags; an unset
        cfg_coef is the checkpoint's."""
        from .lm.sampling import SamplingParams

        explicit = {"temperature": self.temperature, "top_k": self.top_k, "cfg_coef": self.cfg_coef}
        base = UPSTREAM_LOW_MEM_SAMPLING if self.low_mem else {}
        chosen = {**base, **{k: v for k, v in explicit.items() if v is not None}}
        return SamplingParams(**chosen, greedy=self.greedy, low_mem=self.low_mem)


class DefaultStages:
    def __init__(self, settings: GenerationSettings):
        self.settings = settings
        self._generator = None
        self._ckpt = None

    def check(self, lm: bool) -> list[str]:
        """Option ranges and, when the LM may run, the checkpoint folder (see `levo_batch.preflight`)."""
        from .assets import open_lm_checkpoint
        from .preflight import option_problems

        error = None
        if lm:
            self._ckpt, error = open_lm_checkpoint(self.settings.ckpt_dir, self.settings.lm_version)
        max_dur = self._ckpt.config.max_dur if self._ckpt is not None else None
        return option_problems(self.settings, max_dur) + ([error] if error else [])

    def lm_version(self) -> str:
        return self._ckpt.config.version

    def assets(self, needs) -> list[str]:
        from .assets import asset_problems

        return asset_problems(self.settings.runtime, needs, self.settings.ckpt_dir)

    def recipe(self, lm: bool) -> dict:
        """What makes a song's audio besides the song itself, from the settings alone (no model loaded)."""
        from .assets import runtime_assets
        from .preflight import Needs

        s = self.settings
        files = {a.what: f"{a.path.name}:{a.path.stat().st_size}" for a in
                 runtime_assets(s.runtime, Needs(decoder=True), None) if a.needed and a.present}
        out = {"decoder": {"files": files, "low_mem": s.low_mem, "device": s.device or "auto",
                           "compile": s.decoder_compile, "batch": s.decoder_batch_size()}}
        if lm:
            from .lm.loading import model_id

            cfg = self._ckpt.config
            rest = {k: v for k, v in asdict(s).items() if k not in NOT_LM_SETTINGS}
            out["lm"] = {**rest, "model": model_id(self._ckpt), "lm_dtype": s.lm_load_dtype(),
                         "sampling": s.sampling().with_cfg_coef(cfg.cfg_coef).fingerprint(),
                         "max_duration": s.max_duration if s.max_duration is not None else cfg.max_dur}
        return out

    def prompts(self):
        from .prompts.prepare import PromptPreparer

        return PromptPreparer(self.settings.runtime, device=self.settings.device)

    def generator(self):
        from .lm.generate import MLXTokenGenerator
        from .lm.loading import load_lm
        from .lm.tokenizer import TextTokenizers

        s = self.settings
        loaded = load_lm(s.ckpt_dir, dtype=s.lm_load_dtype(), version=s.lm_version)
        tokenizers = TextTokenizers.from_dir(self.tokenizer_dir(), loaded.config.version)
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
        return SepTokenDecoder.load(s.runtime, device=s.device, batch_size=s.decoder_batch_size(),
                                    prompt_on_stems=not s.low_mem, compile=s.decoder_compile)
