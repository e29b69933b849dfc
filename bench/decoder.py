"""Decoder speed: seconds of compute per second of audio (RTF) for tokens -> 48 kHz stereo, with the split between
the flow estimator and the VAE.

Random weights of the real geometry (estimator 16 x 2200, VAE base width 128) built in memory in upstream's
tensor names and loaded through the product's loaders, unless `--runtime` points at a runtime folder (real
weights, or one written by bench/common.py `write_runtime`). Each batch size decodes that many songs at once
(`SepTokenDecoder(batch_size=B)`: window k of B songs share one estimator batch).

    python bench/decoder.py                                       # 150-s song, batch 1 and 4, best device
    python bench/decoder.py --device cuda --dtype bfloat16 --batch 1 4 8
    python bench/decoder.py --device cpu --windows 1 --steps 1 --batch 1     # CPU smoke run (minutes)
    python bench/decoder.py --runtime third_party/SongGeneration --gen-type separate

Speed depends on shapes and dtypes, not on weight values. `--layers`/`--steps` shrink the work for quick CPU
runs; the printed RTF is then not the real one (the flow part scales linearly with both).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

from levo_batch.decoder.estimator import TIME_FREQ_DIM, DecoderConfig
from levo_batch.decoder.flow import CompiledOrEager, FlowDecoder
from levo_batch.decoder.septoken import SepTokenDecoder, default_flow_dtype
from levo_batch.decoder.vae import OobleckVAE, VAEConfig
from levo_batch.gen_types import GEN_TYPES
from levo_batch.runtime import RuntimePaths
from levo_batch.contracts import DecodeRequest
from levo_batch.torch_utils import torch_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CODEBOOK, CODE_DIM, TOKEN_DIM, MASK_DIM = 16384, 32, 1024, 24


class RandomSeptoken(Mapping[str, torch.Tensor]):
    """The decoder's tensors of `model_2.safetensors`, made on first access: Gaussian matrices with 1/sqrt(fan-in)
    scale, unit norms and weight-norm gains, zero biases, frozen unit latent statistics."""

    def __init__(self, cfg: DecoderConfig, seed: int = 0):
        e, p = cfg.n_embd, "cfm_wrapper.estimator."
        shapes = {
            f"{p}wpe.weight": (cfg.n_positions, e), f"{p}ln_f.weight": (e,), f"{p}ln_f.bias": (e,),
            f"{p}proj_out.weight": (e, e), f"{p}proj_out.bias": (e,), f"{p}scale_shift_table": (2, e),
            f"{p}adaln_single.emb.timestep_embedder.linear_1.weight": (e, TIME_FREQ_DIM),
            f"{p}adaln_single.emb.timestep_embedder.linear_1.bias": (e,),
            f"{p}adaln_single.emb.timestep_embedder.linear_2.weight": (e, e),
            f"{p}adaln_single.emb.timestep_embedder.linear_2.bias": (e,),
            f"{p}adaln_single.linear.weight": (6 * e, e), f"{p}adaln_single.linear.bias": (6 * e,),
            "mask_emb.weight": (3, MASK_DIM), "normfeat.counts": (1,), "normfeat.sum_x": (64,),
            "normfeat.sum_x2": (64,),
        }
        for i in range(cfg.n_layer):
            b = f"{p}h.{i}."
            for name, (n_in, n_out) in {"attn.c_attn": (e, 3 * e), "attn.c_proj": (e, e),
                                        "mlp.c_fc": (e, cfg.n_inner), "mlp.c_proj": (cfg.n_inner, e)}.items():
                shapes[f"{b}{name}.weight"], shapes[f"{b}{name}.bias"] = (n_in, n_out), (n_out,)
            for ln in ("ln_1", "ln_2"):
                shapes[f"{b}{ln}.weight"], shapes[f"{b}{ln}.bias"] = (e,), (e,)
            shapes[f"{b}scale_shift_table"] = (6, e)
        for vq in ("rvq_bestrq_emb.", "rvq_bestrq_bgm_emb."):
            q = f"{vq}quantizers.0."
            shapes.update({f"{q}codebook.weight": (CODEBOOK, CODE_DIM), f"{q}in_proj.weight_g": (CODE_DIM, 1, 1),
                           f"{q}in_proj.weight_v": (CODE_DIM, TOKEN_DIM, 1), f"{q}in_proj.bias": (CODE_DIM,),
                           f"{q}out_proj.weight_g": (TOKEN_DIM, 1, 1),
                           f"{q}out_proj.weight_v": (TOKEN_DIM, CODE_DIM, 1), f"{q}out_proj.bias": (TOKEN_DIM,)})
        self.shapes, self.seed = shapes, seed

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        leaf = name.rsplit(".", 1)[-1]
        if name in ("normfeat.counts", "normfeat.sum_x2"):
            return torch.full(shape, 200_000.0)
        if name == "normfeat.sum_x" or leaf == "bias":
            return torch.zeros(shape)
        if leaf == "weight_g" or (leaf == "weight" and len(shape) == 1):
            return torch.ones(shape)
        gen = torch.Generator().manual_seed(self.seed + sorted(self.shapes).index(name))
        return torch.randn(shape, generator=gen) * (shape[0] if "c_" in name else math.prod(shape[1:])) ** -0.5

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class StageTimer:
    """Wall time inside the flow sampler and the VAE decode (device-synchronised before and after)."""

    def __init__(self, decoder: SepTokenDecoder, device: torch.device):
        self.seconds = {"estimator": 0.0, "vae": 0.0}
        self.calls = {"estimator": 0, "vae": 0}
        decoder.flow.sample = self._wrap("estimator", decoder.flow.sample, device)
        decoder.vae.decode_chunked = self._wrap("vae", decoder.vae.decode_chunked, device)

    def _wrap(self, stage: str, fn, device: torch.device):
        def timed(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1
            return out
        return timed

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> SepTokenDecoder:
    overrides = {k: v for k, v in (("num_steps", args.steps), ("n_layer", args.layers)) if v is not None}
    if args.runtime:
        if args.layers is not None:
            raise SystemExit("--layers only applies to random weights (drop --runtime)")
        decoder = SepTokenDecoder.load(RuntimePaths.resolve(args.runtime), batch_size=args.batch[0], device=device,
                                       dtype=dtype, vae_dtype=DTYPES[args.vae_dtype], compile=False)
        decoder.flow.cfg = decoder.cfg = replace(decoder.cfg, **overrides)
        return decoder
    cfg = replace(DecoderConfig(), **overrides)
    flow = FlowDecoder.from_state_dict(RandomSeptoken(cfg), cfg, device=device, dtype=dtype)
    torch.manual_seed(0)
    with torch.device(device):
        vae = OobleckVAE(VAEConfig(channels=args.vae_channels), parts=("decoder",))
    vae = vae.eval().requires_grad_(False).to(DTYPES[args.vae_dtype])
    return SepTokenDecoder(flow, vae, batch_size=args.batch[0])


def compare_precision(decoder: SepTokenDecoder, args: argparse.Namespace, device: torch.device) -> None:
    """Latent drift of the flow in its dtype against float32 on one window (same weights, codes, noise)."""
    cfg = decoder.cfg
    if args.runtime:
        from levo_batch.codec.weights import SafetensorsDict

        weights = SafetensorsDict(RuntimePaths.resolve(args.runtime).septoken)
    else:
        weights = RandomSeptoken(cfg)
    reference = FlowDecoder.from_state_dict(weights, cfg, device=device, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    frames = decoder.plan.frames
    codes = torch.randint(0, CODEBOOK, (2, 1, frames), generator=gen).to(device)
    noise = torch.randn(1, frames, 64, generator=gen).to(device)
    context = torch.randn(1, frames, 64, generator=gen).to(device)
    incontext = torch.tensor([decoder.plan.overlap], device=device)
    ours = decoder.flow.sample(codes[0], codes[1], context, incontext, noise)
    ref = reference.sample(codes[0], codes[1], context, incontext, noise)
    rel = ((ours - ref).norm() / ref.norm()).item()
    flow_dtype = next(p.dtype for n, p in decoder.flow.named_parameters() if n.endswith("proj_out.weight"))
    print(f"precision: latents {str(flow_dtype)[6:]} vs float32 on one window: max abs "
          f"{(ours - ref).abs().max().item():.3e}, relative L2 {rel:.3e} ({-20 * math.log10(max(rel, 1e-12)):.1f} dB)")


def flops_per_window(cfg: DecoderConfig) -> float:
    """Estimator FLOPs of one window (CFG doubles the batch): linears 2*T*params + attention 4*T^2*E per layer."""
    t, e = cfg.duration * 25, cfg.n_embd
    linear = cfg.n_layer * (4 * e * e + 2 * e * cfg.n_inner) + e * 64
    return 2 * cfg.num_steps * (2 * t * linear + cfg.n_layer * 4 * t * t * e)


def requests(n_songs: int, frames: int, gen_type: str) -> list[DecodeRequest]:
    rng = np.random.default_rng(0)
    return [DecodeRequest(f"s{i}", rng.integers(0, CODEBOOK, (3, frames)), gen_type, seed=i) for i in range(n_songs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="flow precision (default: the decoder's, float16 on GPU, float32 on CPU)")
    parser.add_argument("--vae-dtype", choices=DTYPES, default="float32")
    parser.add_argument("--seconds", type=float, default=150.0, help="song length (default 150)")
    parser.add_argument("--windows", type=int, default=None, help="cut songs to this many 40-s windows")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="songs decoded together")
    parser.add_argument("--gen-type", choices=tuple(GEN_TYPES), default="mixed")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (real: 10)")
    parser.add_argument("--layers", type=int, default=None, help="estimator blocks (real: 16; CPU smoke only)")
    parser.add_argument("--vae-channels", type=int, default=128, help="VAE base width of the random model")
    parser.add_argument("--runtime", type=Path, default=None, help="runtime folder with (real) weights")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the estimator (what --decoder-compile does in the product)")
    parser.add_argument("--compare", action="store_true", help="also report the flow's drift against float32")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="decode one window per song first (kernel selection, allocator)")
    args = parser.parse_args()

    device = torch_device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else default_flow_dtype(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    start = time.perf_counter()
    decoder = build(args, device, dtype)
    if args.compile:
        decoder.flow.estimator = CompiledOrEager(decoder.flow.estimator)
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}) "
          f"flow={str(dtype)[6:]} vae={args.vae_dtype} layers={decoder.cfg.n_layer} steps={decoder.cfg.num_steps} "
          f"gen_type={args.gen_type} built in {time.perf_counter() - start:.1f} s")
    frames = round(args.seconds * 25)
    if args.windows:
        frames = min(frames, decoder.plan.hop * args.windows + decoder.plan.overlap)
    windows = max(1, math.ceil((frames - decoder.plan.overlap) / decoder.plan.hop))
    decodes = len(GEN_TYPES[args.gen_type].decodes)
    audio_seconds = frames / 25
    timer = StageTimer(decoder, device)
    for batch in args.batch:
        decoder.batch_size = batch
        songs = requests(batch, frames, args.gen_type)
        if args.warmup:
            list(decoder.decode(requests(batch, min(frames, decoder.plan.frames), args.gen_type)))
        timer.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        for _ in decoder.decode(songs):
            pass
        sync(device)
        wall = time.perf_counter() - start
        total_audio = batch * audio_seconds
        est, vae = timer.seconds["estimator"], timer.seconds["vae"]
        tflops = flops_per_window(decoder.cfg) * windows * decodes * batch / max(est, 1e-9) / 1e12
        memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        print(f"batch {batch}: {batch} x {audio_seconds:.0f}-s song(s) ({windows} window(s) x {decodes} decode(s)) "
              f"in {wall:.2f} s -> RTF {wall / total_audio:.4f} ({wall / batch:.2f} s per song){memory}")
        print(f"  estimator {est:.2f} s ({est / total_audio:.4f} s/s audio, {timer.calls['estimator']} batches, "
              f"{tflops:.3g} TFLOP/s)  vae {vae:.2f} s ({vae / total_audio:.4f} s/s, {timer.calls['vae']} calls)  "
              f"other {wall - est - vae:.2f} s")
    if args.compare:
        compare_precision(decoder, args, device)


if __name__ == "__main__":
    main()
