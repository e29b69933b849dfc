"""The AudioDecoder: LM tokens -> 48 kHz stereo, as upstream's separate-token decoder (`Flow1dVAESeparate`).

Per song this runs upstream's `generate_audio` + `code2sound`: rows 1 (vocal) and 2 (bgm) are decoded,
row 0 never; bgm-only / vocal-only decodes replace the other row with a constant filler token; `separate`
is three full decodes. Differences from upstream, all deliberate:
- noise is drawn per (song seed, decode kind, window) from a CPU generator instead of one global RNG
  stream, so a song renders the same alone, in any batch, on any device, and when re-decoded;
- the same window of several songs is sampled as one batch (`batch_size`), which changes nothing else.
Prompt audio conditions the decoder exactly where upstream's `generate()` uses it: mixed and separate runs
(each of the three separate decodes, with the other stem's prompt zeroed for the single-stem ones); plain
bgm/vocal runs ignore it, as upstream does. With `prompt_on_stems=False` (upstream's `generate_lowmem()`)
only the mixed decode of a separate run gets it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from levo_batch.codec.weights import SafetensorsDict
from levo_batch.contracts import SAMPLE_RATE, DecodeRequest, PromptAudio
from levo_batch.decoder.estimator import LATENT_DIM, DecoderConfig
from levo_batch.decoder.flow import CompiledOrEager, FlowDecoder, seeded_noise
from levo_batch.decoder.windows import SAMPLES_PER_FRAME, SongWindows, WindowJob, WindowPlan, advance, render
from levo_batch.gen_types import GEN_TYPES
from levo_batch.runtime import RuntimePaths
from levo_batch.torch_utils import torch_device

FILLER = {"bgm": (0, 3142), "vocal": (1, 9670)}
"""Single-stem decodes: (row of the [vocal, bgm] pair replaced, constant token upstream puts there)."""

CODEBOOK_SIZE = 16384
VAE_OVERLAP = 32
NOISE_SCHEME = "sha256(seed:kind/window{k}) -> torch.Generator(cpu).randn, v1"


def default_flow_dtype(device: torch.device) -> torch.dtype:
    """float16 on accelerators, as upstream's CUDA autocast (drift from fp32 ~10x below bfloat16's, see
    bench/decoder.py --compare); float32 on CPU."""
    return torch.float32 if device.type == "cpu" else torch.float16


def stem_codes(tokens: np.ndarray, kind: str) -> np.ndarray:
    """`[3, T]` LM tokens -> `[2, T]` (vocal, bgm) codes for one decode kind, fillers applied."""
    codes = np.array(tokens[1:3], dtype=np.int64)
    if kind in FILLER:
        row, token = FILLER[kind]
        codes[row] = token
    return codes


def prompt_stems(prompt: PromptAudio, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's crop (first 10 s, or 20-30 s of prompts >= 30 s) and, for single-stem decodes, the other
    stem zeroed. Returns float32 `[2, N]` vocal and bgm."""
    vocal, bgm = (torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in (prompt.vocal, prompt.bgm))
    if vocal.shape[-1] < 30 * SAMPLE_RATE:
        vocal, bgm = vocal[:, : 10 * SAMPLE_RATE], bgm[:, : 10 * SAMPLE_RATE]
    else:
        vocal, bgm = vocal[:, 20 * SAMPLE_RATE : 30 * SAMPLE_RATE], bgm[:, 20 * SAMPLE_RATE : 30 * SAMPLE_RATE]
    if kind == "bgm":
        vocal = torch.zeros_like(vocal)
    elif kind == "vocal":
        bgm = torch.zeros_like(bgm)
    return vocal, bgm


def validate(song: DecodeRequest) -> None:
    """Reject malformed requests before any model work, naming the song."""
    if song.gen_type not in GEN_TYPES:
        raise ValueError(f"song {song.idx}: gen_type {song.gen_type!r} is not one of {tuple(GEN_TYPES)}")
    tokens = np.asarray(song.tokens)
    if tokens.ndim != 2 or tokens.shape[0] != 3 or tokens.shape[1] < 1:
        raise ValueError(f"song {song.idx}: tokens must be [3, T] with T >= 1, got {list(tokens.shape)}")
    rows = tokens[1:3]
    if rows.min() < 0 or rows.max() >= CODEBOOK_SIZE:
        raise ValueError(f"song {song.idx}: vocal/bgm tokens must lie in [0, {CODEBOOK_SIZE}) (EOS and padding "
                         f"cut off), got range [{rows.min()}, {rows.max()}]")
    p = song.prompt_audio
    if p is not None:
        shapes = [np.shape(p.vocal), np.shape(p.bgm)]
        if any(len(s) != 2 or s[0] != 2 for s in shapes) or shapes[0] != shapes[1]:
            raise ValueError(f"song {song.idx}: prompt vocal/bgm must both be (2, N) at 48 kHz, got {shapes}")


class SepTokenDecoder:
    """`AudioDecoder` over upstream's septoken checkpoint and Oobleck VAE (PyTorch, any device)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, flow: FlowDecoder, vae, *, batch_size: int, prompt_models: Callable[[], tuple] | None = None,
                 prompt_on_stems: bool = True, info: dict | None = None):
        """`vae` needs `decode_chunked(latents, chunk_size, overlap)`. `prompt_models()` returns (VAE with
        `encode_audio(audio, noise=)`, septoken encoder with `encode(vocal, bgm)`); it is called once, on the
        first prompt, so prompt-less runs never load MusicFM or the VAE encoder. `prompt_on_stems=False` keeps
        prompts off the vocal/bgm decodes of separate runs (upstream's low-memory path)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.flow = flow
        self.vae = vae
        self.batch_size = batch_size
        self.prompt_on_stems = prompt_on_stems
        self.cfg = flow.cfg
        self.plan = WindowPlan.for_duration(self.cfg.duration)
        self.device = flow.mask_emb.device
        self.info = info or {}
        self._prompt_loader = prompt_models
        self._prompt_models: tuple | None = None
        if self.plan.frames > self.cfg.n_positions:
            raise ValueError(f"{self.cfg.duration} s windows need {self.plan.frames} positions, the estimator has "
                             f"{self.cfg.n_positions}")

    @classmethod
    def load(cls, runtime: RuntimePaths, *, batch_size: int, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, prompt_on_stems: bool = True,
             vae_dtype: torch.dtype = torch.float32, compile: bool = False) -> "SepTokenDecoder":
        """Read the septoken safetensors (decoder tensors only) and the VAE decoder from the runtime folder.

        The flow runs in `dtype` (default `default_flow_dtype`), the VAE in `vae_dtype` (float32 like upstream).
        `compile` wraps the estimator in `torch.compile`: on an H100 a warm window batch is ~10 % faster, but
        compiling costs ~30 s and recompiles per batch size, so it only pays for long albums (off by default).
        """
        from levo_batch.decoder.vae import load_vae

        device = torch_device(device) if not isinstance(device, torch.device) else device
        dtype = dtype or default_flow_dtype(device)
        septoken = runtime.require(runtime.septoken, "septoken decoder weights")
        vae_config = runtime.require(runtime.vae_config, "VAE config")
        vae_weights = runtime.require(runtime.vae_weights, "VAE weights")
        cfg = DecoderConfig.for_weights(septoken)
        weights = SafetensorsDict(septoken)
        flow = FlowDecoder.from_state_dict(weights, cfg, device=device, dtype=dtype)
        if compile:
            flow.estimator = CompiledOrEager(flow.estimator)
        vae = load_vae(vae_config, vae_weights, device, vae_dtype, parts=("decoder",))

        def prompt_models() -> tuple:
            from levo_batch.codec.septoken_encoder import SepTokenEncoder, config_for

            return (load_vae(vae_config, vae_weights, device, torch.float32, parts=("encoder",)),
                    SepTokenEncoder.from_state_dict(weights, device, torch.float32, config_for(septoken)))

        info = {"septoken": f"{septoken.name}:{septoken.stat().st_size}",
                "vae": f"{vae_weights.name}:{vae_weights.stat().st_size}",
                "dtype": str(dtype).removeprefix("torch."), "vae_dtype": str(vae_dtype).removeprefix("torch."),
                "device": device.type}
        return cls(flow, vae, prompt_models=prompt_models, batch_size=batch_size, prompt_on_stems=prompt_on_stems,
                   info=info)

    def fingerprint(self) -> dict:
        """Weights (name:size), precision, device type, geometry, noise scheme and batch size (the flow's
        batch shape sets its float rounding, see `_sample`)."""
        return {"decoder": "septoken", **self.info, "config": asdict(self.cfg), "noise": NOISE_SCHEME,
                "prompt_on_stems": self.prompt_on_stems, "batch_size": self.batch_size}

    def decode(self, songs: Sequence[DecodeRequest]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        songs = list(songs)
        for song in songs:
            validate(song)
        if len({s.idx for s in songs}) != len(songs):
            raise ValueError("duplicate idx in one decode call")
        expected = {s.idx: len(GEN_TYPES[s.gen_type].decodes) for s in songs}
        done: dict[str, dict[str, np.ndarray]] = {}
        windows = (w for song in songs for w in self._song_windows(song))
        for song_windows in advance(windows, self._sample, self.batch_size):
            idx, stem = song_windows.key
            audio = render(song_windows, self._vae_decode, self.cfg.vae_chunk_size, VAE_OVERLAP)
            done.setdefault(idx, {})[stem] = audio
            if len(done[idx]) == expected[idx]:
                yield idx, done.pop(idx)

    def _song_windows(self, song: DecodeRequest) -> Iterator[SongWindows]:
        """One SongWindows per decode of the song (three for separate), built only when a batch slot frees up."""
        frames = self.plan.frames
        for stem, kind in GEN_TYPES[song.gen_type].decodes:
            prompt_codes = prompt_latent = None
            if self._uses_prompt(song, kind):
                prompt_codes, prompt_latent = self._encode_prompt(song.prompt_audio, kind, song.seed)

            def noise(k: int, seed: int = song.seed, kind: str = kind) -> torch.Tensor:
                return seeded_noise(seed, f"{kind}/window{k}", (frames, LATENT_DIM))

            yield SongWindows((song.idx, stem), stem_codes(song.tokens, kind), noise, self.plan,
                              prompt_codes, prompt_latent)

    def _uses_prompt(self, song: DecodeRequest, kind: str) -> bool:
        if song.prompt_audio is None or not GEN_TYPES[song.gen_type].decoder_prompt:
            return False
        return kind == "mixed" or self.prompt_on_stems

    def _encode_prompt(self, prompt: PromptAudio, kind: str, seed: int) -> tuple[np.ndarray, torch.Tensor]:
        """Prompt codes `[2, Lc]` (septoken encoder) and sampled VAE latents `[Lp, 64]` of the raw stem mix."""
        if self._prompt_models is None:
            if self._prompt_loader is None:
                raise RuntimeError("prompt audio given but this decoder was built without prompt models")
            self._prompt_models = self._prompt_loader()
        vae_encoder, token_encoder = self._prompt_models
        vocal, bgm = prompt_stems(prompt, kind)
        noise = seeded_noise(seed, f"{kind}/prompt", (1, LATENT_DIM, vocal.shape[-1] // SAMPLES_PER_FRAME))
        latent = vae_encoder.encode_audio((vocal + bgm).to(self.device), noise=noise)[0].t().float()
        codes_vocal, codes_bgm = token_encoder.encode(vocal, bgm)
        codes = np.stack([codes_vocal.cpu().numpy(), codes_bgm.cpu().numpy()]).astype(np.int64)
        return codes, latent.to(self.device)

    def _sample(self, jobs: Sequence[WindowJob]) -> torch.Tensor:
        """Stack one window of several songs into a batch for the flow model.

        The batch is always padded to `batch_size` rows (copies of the first window): kernels pick their
        blocking, hence their float rounding, by shape, so a fixed shape makes each song's audio bit-identical
        whatever songs share its batch (a resumed run or a subset of the jsonl equals the full run).
        """
        count = len(jobs)
        jobs = [*jobs, *[jobs[0]] * (self.batch_size - count)]
        return self._sample_rows(jobs)[:count]

    def _sample_rows(self, jobs: Sequence[WindowJob]) -> torch.Tensor:
        frames = jobs[0].codes.shape[-1]
        codes = torch.from_numpy(np.stack([j.codes for j in jobs])).to(self.device)
        context = torch.zeros(len(jobs), frames, LATENT_DIM, device=self.device)
        for i, job in enumerate(jobs):
            if job.incontext:
                context[i, : job.incontext] = job.context[: job.incontext]
        incontext = torch.tensor([j.incontext for j in jobs], device=self.device)
        noise = torch.stack([j.noise for j in jobs]).to(self.device)
        return self.flow.sample(codes[:, 0], codes[:, 1], context, incontext, noise)

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_chunked(latents, chunk_size=self.cfg.vae_chunk_size, overlap=VAE_OVERLAP)
