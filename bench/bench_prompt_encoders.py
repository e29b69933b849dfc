"""Time the prompt token encoders (row 0: 1rvq / MusicFM layer 6; rows 1-2: septoken / layers 7 and 3).

Writes random checkpoints of the real geometry (or uses the tiny fixtures) in the safetensors layout upstream
ships, then times `load` (which reads only the ~200 M / ~180 M parameters the encoders use) and `encode` of
prompts of the given lengths. A prompt of up to 40 s is one MusicFM pass per stream; longer ones add a
40-s segment per 40 s. The real-size files hold only the encoder-side tensors (~1.3 GB each, not upstream's
4.4 / 4.7 GB): reads are by offset, so the rest of a file costs no load time.

    python bench/bench_prompt_encoders.py --size tiny                    # seconds, any machine
    python bench/bench_prompt_encoders.py --seconds 10 45 --repeats 3    # real size, default device
    python bench/bench_prompt_encoders.py --dtype bfloat16 --compare     # + code agreement with float32
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from common import TensorSpec, decoder_weight, find_fixtures, write_safetensors
from levo_batch.codec.septoken_encoder import RVQ1Encoder, SepTokenEncoder
from levo_batch.contracts import SAMPLE_RATE
from levo_batch.torch_utils import torch_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REAL = {"rvq1": "rvq1_PromptCondAudioDiffusion", "septoken": "septoken_PromptCondAudioDiffusion"}
ENCODER_PREFIXES = ("bestrq.", "rvq_bestrq", "rsq48tobestrq.")


def real_files(fixtures: Path, workdir: Path) -> dict[str, Path]:
    """Random real-size encoder checkpoints in `workdir` (kept and reused between runs)."""
    shapes = json.loads((fixtures / "decoder_tiny" / "real_size_state_dicts.json").read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, entry in REAL.items():
        path = workdir / f"{name}_encoder_real.safetensors"
        if not path.is_file():
            specs = {k: TensorSpec("I64" if k.endswith("num_batches_tracked") else "F32", tuple(v))
                     for k, v in shapes[entry]["shapes"].items() if k.startswith(ENCODER_PREFIXES)}
            print(f"writing {path} ({sum(s.nbytes for s in specs.values()) / 1e9:.2f} GB) ...", flush=True)
            write_safetensors(path, specs, lambda k, specs=specs: random_tensor(k, specs[k]), {"format": "pt"})
        out[name] = path
    return out


def random_tensor(name: str, spec: TensorSpec):
    if spec.dtype == "I64":
        return torch.zeros(spec.shape, dtype=torch.int64).numpy()
    if name.endswith("mel_scale.fb"):  # non-negative, like a real filterbank (keeps the log finite)
        return decoder_weight(name, spec.shape, 0).abs().numpy()
    return decoder_weight(name, spec.shape, 0).numpy()


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best of `repeats` after one warm-up; encoders return CPU tensors, so the device is synchronised."""
    out = fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def agreement(a, b) -> float:
    pairs = list(zip(a, b)) if isinstance(a, tuple) else [(a, b)]
    return sum((x == y).sum().item() for x, y in pairs) / sum(x.numel() for x, _ in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="MusicFM compute precision")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 45.0], help="prompt lengths")
    parser.add_argument("--batch-size", type=int, default=8, help="40-s segments per MusicFM pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="also report code agreement with a float32 run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "levo_bench_prompt")
    parser.add_argument("--fixtures", type=Path, default=None)
    args = parser.parse_args()

    device = torch_device(args.device)
    fixtures = find_fixtures(args.fixtures)
    if args.size == "tiny":
        files = {"rvq1": fixtures / "encoder_tiny" / "rvq1_model.safetensors",
                 "septoken": fixtures / "decoder_tiny" / "septoken_model.safetensors"}
        config = json.loads((fixtures / "encoder_tiny" / "w2v2_config_tiny.json").read_text())
    else:
        files, config = real_files(fixtures, args.workdir), None
    print(f"device {device}, dtype {args.dtype}, size {args.size}, batch {args.batch_size}")

    encoders = {}
    for name, cls in (("rvq1", RVQ1Encoder), ("septoken", SepTokenEncoder)):
        start = time.perf_counter()
        enc = cls.load(files[name], device=device, dtype=DTYPES[args.dtype], config=config)
        seconds = time.perf_counter() - start
        enc.batch_size = args.batch_size
        params = sum(p.numel() for p in enc.musicfm.parameters()) + sum(v.codebook.numel() for v in enc.vqs)
        print(f"load {name:8s} {seconds:6.2f} s  {params / 1e6:7.1f} M parameters used")
        encoders[name] = enc
    reference = {}
    if args.compare and args.dtype != "float32":
        for name, cls in (("rvq1", RVQ1Encoder), ("septoken", SepTokenEncoder)):
            reference[name] = cls.load(files[name], device=device, dtype=torch.float32, config=config)

    gen = torch.Generator().manual_seed(0)
    for secs in args.seconds:
        n = int(secs * SAMPLE_RATE)
        mix, vocal = torch.randn(2, n, generator=gen) * 0.2, torch.randn(2, n, generator=gen) * 0.1
        bgm = mix - vocal
        runs = {"rvq1": lambda e: e.encode(mix), "septoken": lambda e: e.encode(vocal, bgm)}
        for name, run in runs.items():
            best, codes = timed(lambda: run(encoders[name]), args.repeats)
            line = f"encode {name:8s} {secs:6.1f} s prompt: {best * 1000:8.1f} ms  ({secs / best:7.1f}x real time)"
            if name in reference:
                line += f"  codes equal to float32: {agreement(codes, run(reference[name])):.4f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
