"""Time the Oobleck VAE decoder the way the decoder phase uses it: 1000-frame windows, chunked 128/32.

A song of S seconds is max(1, ceil((25 S - 250) / 750)) windows of 1000 latent frames (upstream's 40-s
windows); all windows of all songs go to one `decode_chunked` call, whose chunks are decoded
`--max-batch` at a time. Random real-size weights unless `--config/--weights` point at the real files.

    python bench/bench_vae.py                                  # 1 song of 150 s, fp32, default device
    python bench/bench_vae.py --songs 4 --max-batch 16 --dtype bfloat16 --compare
    python bench/bench_vae.py --compile snake --no-tf32 --encode-seconds 10
    python bench/bench_vae.py --no-cudnn --max-batch 1          # upstream's setting (generate.py disables cuDNN)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from levo_batch.decoder.vae import OobleckVAE, VAEConfig, load_vae
from levo_batch.torch_utils import torch_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def build(args: argparse.Namespace, device: torch.device) -> OobleckVAE:
    """The float32 model: real weights if given, else seeded random ones of the real geometry."""
    if args.weights:
        return load_vae(args.config, args.weights, device)
    config = VAEConfig.from_json(args.config) if args.config else VAEConfig(channels=args.channels)
    torch.manual_seed(0)
    with torch.device(device):
        vae = OobleckVAE(config)
    return vae.eval().requires_grad_(False)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up: kernel selection, compilation
    sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--seconds", type=float, default=150.0, help="song length")
    parser.add_argument("--songs", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=8, help="chunks per decoder call")
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--frames", type=int, default=1000, help="latent frames per window")
    parser.add_argument("--channels", type=int, default=128, help="base width of a random model (real: 128)")
    parser.add_argument("--config", type=Path, help="stable_audio_1920_vae.json")
    parser.add_argument("--weights", type=Path, help="autoencoder_music_1320k.ckpt or .safetensors")
    parser.add_argument("--compile", choices=("none", "snake", "full"), default="none")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="allow TF32 in cuDNN convolutions (PyTorch's default; upstream runs without cuDNN)")
    parser.add_argument("--cudnn", action=argparse.BooleanOptionalAction, default=True,
                        help="use cuDNN (upstream's generate.py turns it off)")
    parser.add_argument("--compare", action="store_true", help="also report the error against a float32 run")
    parser.add_argument("--encode-seconds", type=float, default=0.0, help="also time a prompt encode this long")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch_device(args.device)
    dtype = DTYPES[args.dtype]
    torch.backends.cudnn.enabled = args.cudnn
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    vae = build(args, device)
    windows = max(1, math.ceil((args.seconds * 25 - 250) / 750))
    latents = torch.randn(args.songs * windows, vae.config.latent_dim, args.frames,
                          generator=torch.Generator().manual_seed(1)).to(device)
    reference = None
    if args.compare and dtype != torch.float32:
        reference = vae.decode_chunked(latents[:1], args.chunk_size, args.overlap)
    vae.to(dtype)
    if args.compile == "snake":
        vae.compile_snake()
    elif args.compile == "full":
        vae.decoder.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def decode() -> torch.Tensor:
        return vae.decode_chunked(latents, args.chunk_size, args.overlap, max_batch=args.max_batch)

    seconds, out = timed(decode, device, args.repeats)
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}) "
          f"dtype={args.dtype} cudnn={args.cudnn} tf32={args.tf32} compile={args.compile} max_batch={args.max_batch} "
          f"chunk={args.chunk_size}/{args.overlap}")
    print(f"decode: {args.songs} song(s) x {windows} window(s) of {args.frames} frames in {seconds:.3f} s "
          f"-> {seconds / args.songs:.3f} s per {args.seconds:.0f}-s song, "
          f"{seconds / (args.songs * windows):.3f} s per window")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")

    if reference is not None:
        err = (out[:1].float() - reference).abs().max().item()
        print(f"max |{args.dtype} - float32| = {err:.3e} (float32 peak {reference.abs().max().item():.3e})")

    if args.encode_seconds > 0 and vae.encoder is not None:
        samples = int(args.encode_seconds * vae.config.sample_rate)
        audio = torch.randn(1, vae.config.io_channels, samples, generator=torch.Generator().manual_seed(2))
        audio = (0.1 * audio).to(device)
        enc_seconds, _ = timed(lambda: vae.encode_audio(audio, generator=torch.Generator().manual_seed(3)),
                               device, args.repeats)
        print(f"encode: {args.encode_seconds:.0f} s of prompt audio in {enc_seconds:.3f} s")


if __name__ == "__main__":
    main()
