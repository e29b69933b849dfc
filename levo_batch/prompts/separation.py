"""Vocal separation of prompt audio with Demucs v4 `htdemucs`, as upstream's generate.py runs it.

The model class and `apply_model` come from the PyPI `demucs` package (a dependency); the weights
are the runtime's `third_party/demucs/ckpt/htdemucs.pth`, a plain state dict whose hyper-parameters live in
upstream's loader code (mirrored in `HTDEMUCS_HPARAMS`). What upstream does, and we repeat:

- the whole prompt file is separated (the first 10 s of the result depend on the whole file: the input is
  standardised with whole-track statistics and the stem is peak-rescaled over its whole length),
- at 44.1 kHz stereo, standardised by the mean/std of the mono mix, `apply_model(shifts=1, split=True,
  overlap=0.25)` with the model's 7.8-s segment,
- the vocal stem (4th source) rescaled to avoid clipping and quantised to 16 bits as `torchaudio.save`
  writes its FLAC (FFmpeg's conversion, `levo_batch.audio.to_pcm16`): the tokenizers and the decoder get
  that quantised stem back, and it is also what the cache stores.

Deviations, both deliberate: the random time shift of `shifts=1` is drawn from a generator seeded by the
audio content (upstream's is unseeded, so its separation differs run to run), and results are cached by the
content hash of the decoded audio plus the model's hash (upstream caches by file *name*, so two different
prompts called `a.wav` share a stale stem). Upstream decodes the file with ffmpeg when resampling to 44.1 kHz;
we resample with julius (demucs' own fallback when ffmpeg is absent).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import yaml

from levo_batch.atomic import atomic_write_bytes
from levo_batch.audio import to_pcm16, to_stereo
from levo_batch.errors import LevoError

SEPARATION_RATE = 44100
VOCALS = 3
"""Index of the vocal stem in the model's sources."""

HTDEMUCS_HPARAMS: dict = {
    "sources": ["drums", "bass", "other", "vocal"], "audio_channels": 2, "samplerate": SEPARATION_RATE,
    "segment": Fraction(39, 5), "channels": 48, "channels_time": None, "growth": 2, "nfft": 4096,
    "wiener_iters": 0, "end_iters": 0, "wiener_residual": False, "cac": True, "depth": 4, "rewrite": True,
    "multi_freqs": [], "multi_freqs_depth": 3, "freq_emb": 0.2, "emb_scale": 10, "emb_smooth": True,
    "kernel_size": 8, "stride": 4, "time_stride": 2, "context": 1, "context_enc": 0, "norm_starts": 4,
    "norm_groups": 4, "dconv_mode": 3, "dconv_depth": 2, "dconv_comp": 8, "dconv_init": 1e-3,
    "bottom_channels": 512, "t_layers": 5, "t_hidden_scale": 4.0, "t_heads": 8, "t_dropout": 0.02,
    "t_layer_scale": True, "t_gelu": True, "t_emb": "sin", "t_max_positions": 10000, "t_max_period": 10000.0,
    "t_weight_pos_embed": 1.0, "t_cape_mean_normalize": True, "t_cape_augment": True,
    "t_cape_glob_loc_scale": [5000.0, 1.0, 1.4], "t_sin_random_shift": 0, "t_norm_in": True,
    "t_norm_in_group": False, "t_group_norm": False, "t_norm_first": True, "t_norm_out": True,
    "t_weight_decay": 0.0, "t_lr": None, "t_sparse_self_attn": False, "t_sparse_cross_attn": False,
    "t_mask_type": "diag", "t_mask_random_seed": 42, "t_sparse_attn_window": 400, "t_global_window": 100,
    "t_sparsity": 0.95, "t_auto_sparsity": False, "t_cross_first": False, "rescale": 0.1,
}
"""The standard 4-stem htdemucs geometry, which upstream's runtime loader hard-codes for `htdemucs.pth`."""

_CACHE_VERSION = "htdemucs-vocal-v1"
"""Bump when the separation recipe changes, so old cache entries are not reused."""


class SeparationError(LevoError, RuntimeError):
    """The separation model cannot be loaded (missing package, wrong weights file)."""


def _demucs():
    try:
        from demucs.apply import apply_model
        from demucs.htdemucs import HTDemucs
    except ImportError as e:
        raise SeparationError(
            f"prompt audio needs the `demucs` package ({e}), a dependency of levo-batch: reinstall "
            "levo-batch or run `pip install demucs`."
        ) from e
    return HTDemucs, apply_model


class Separator:
    """htdemucs vocal separation with a content-addressed cache of the 16-bit vocal stems."""

    def __init__(self, model: torch.nn.Module, model_id: str, device: torch.device, cache_dir: Path | None):
        self.model = model.to(device).eval()
        self.model_id = model_id
        self.device = device
        self.cache_dir = cache_dir

    @classmethod
    def load(
        cls, weights: Path, config: Path, *, device: torch.device, cache_dir: Path | None = None,
        hparams: dict | None = None,
    ) -> "Separator":
        """Build HTDemucs from the runtime's `htdemucs.pth` (+ `.yaml`); `hparams` only for non-standard models."""
        HTDemucs, _ = _demucs()
        hparams = dict(HTDEMUCS_HPARAMS if hparams is None else hparams)
        bag = yaml.safe_load(Path(config).read_text()) or {}
        if bag.get("segment") is not None and bag["segment"] <= hparams["segment"]:
            hparams["segment"] = bag["segment"]
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not the runtime's state dict"
            raise SeparationError(
                f"cannot load {weights} as a plain state dict ({str(e).splitlines()[0]}). It must be the runtime's "
                "third_party/demucs/ckpt/htdemucs.pth; re-download the runtime assets."
            ) from e
        model = HTDemucs(**hparams)
        try:
            model.load_state_dict(state)
        except (RuntimeError, AttributeError, TypeError) as e:
            raise SeparationError(
                f"{weights} does not match the htdemucs architecture: {str(e).splitlines()[0]} ...; "
                "re-download the runtime assets."
            ) from e
        digest = hashlib.sha256(Path(weights).read_bytes())
        digest.update(repr(sorted(hparams.items())).encode())
        return cls(model, f"htdemucs-{digest.hexdigest()[:16]}", device, cache_dir)

    def vocals(self, mix: np.ndarray, sr: int) -> np.ndarray:
        """The 16-bit vocal stem `(2, M)` float32 at 44.1 kHz of a whole `(C, N)` mixture at `sr`."""
        key = self._key(mix, sr)
        path = self.cache_dir / f"{key}.flac" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            pcm, _ = sf.read(io.BytesIO(path.read_bytes()), dtype="int16", always_2d=True)
        else:
            # Upstream writes the stem as a 16-bit FLAC (torchaudio/FFmpeg conversion) and reads it back.
            pcm = to_pcm16(self._separate(mix, sr, seed=int(key[:15], 16)).numpy())
            if path is not None:
                buf = io.BytesIO()
                sf.write(buf, pcm, SEPARATION_RATE, format="FLAC", subtype="PCM_16")
                atomic_write_bytes(path, buf.getvalue())
        return np.ascontiguousarray(pcm.T).astype(np.float32) / 32768

    def _key(self, mix: np.ndarray, sr: int) -> str:
        h = hashlib.sha256(f"{_CACHE_VERSION}:{self.model_id}:{sr}:{mix.shape}".encode())
        h.update(np.ascontiguousarray(mix, dtype=np.float32).tobytes())
        return h.hexdigest()[:40]

    @torch.no_grad()
    def _separate(self, mix: np.ndarray, sr: int, seed: int) -> torch.Tensor:
        import julius

        _, apply_model = _demucs()
        wav = torch.from_numpy(np.ascontiguousarray(to_stereo(mix), dtype=np.float32))
        if sr != SEPARATION_RATE:
            wav = julius.resample_frac(wav, sr, SEPARATION_RATE)
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std()
        with _python_random(seed):
            out = apply_model(self.model, ((wav - mean) / std)[None], shifts=1, split=True, overlap=0.25,
                              device=self.device)
        vocal = (out[0, VOCALS] * std + mean).cpu()
        return vocal / max(1.01 * vocal.abs().max().item(), 1.0)


@contextlib.contextmanager
def _python_random(seed: int) -> Iterator[None]:
    """demucs draws its shift offset from Python's global `random`: seed it for the call, then restore it."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)
