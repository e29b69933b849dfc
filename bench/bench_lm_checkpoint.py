"""Time LM checkpoint conversion and loading at real sizes, and check peak memory stays near one copy.

Writes a random official release (`config.yaml` + `model.pt`, v2-medium or v2-large geometry) into
`--workdir`, then runs each phase in a fresh process: `convert` (bf16, optionally 4/8-bit) and `load_lm`
of the official folder and of the conversion. Reported memory is the peak anonymous RSS (Linux; sampled),
which excludes the memory-mapped source file pages the kernel can drop at will; elsewhere ru_maxrss.

    python bench/bench_lm_checkpoint.py --preset tiny                  # seconds, any machine
    python bench/bench_lm_checkpoint.py --preset medium --quantize 4   # ~5 GB bf16 model.pt on disk
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

PRESETS = {
    "tiny": {"dim": 64, "intermediate_size": 128, "num_heads": 4, "num_layers": 2, "num_layers_sub": 1},
    "medium": {"dim": 1536, "intermediate_size": 8960, "num_heads": 12, "num_layers": 28, "num_layers_sub": 12},
    "large": {"dim": 2048, "intermediate_size": 11008, "num_heads": 16, "num_layers": 36, "num_layers_sub": 12},
}


def _peak_anon_gb(stop: threading.Event, out: list[float]) -> None:
    status = Path("/proc/self/status")
    while not stop.wait(0.05):
        for line in status.read_text().splitlines():
            if line.startswith("RssAnon:"):
                out.append(int(line.split()[1]) / 2**20)


def _phase(name: str, fn, args, queue) -> None:
    samples: list[float] = []
    stop = threading.Event()
    if sys.platform.startswith("linux"):
        threading.Thread(target=_peak_anon_gb, args=(stop, samples), daemon=True).start()
    t0 = time.perf_counter()
    info = fn(*args)
    seconds = time.perf_counter() - t0
    stop.set()
    scale = 2**30 if sys.platform == "darwin" else 2**20
    peak = max(samples) if samples else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    queue.put((name, seconds, peak, info))


def write_official(folder: Path, preset: str, stored: str) -> str:
    import torch
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from lm_checkpoints import upstream_config

    from levo_batch.lm.config import LMConfig
    from levo_batch.lm.loading import OFFICIAL_PREFIX, official_shapes

    raw = upstream_config({"lm": PRESETS[preset]})
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[stored]
    gen = torch.Generator().manual_seed(0)
    state = {OFFICIAL_PREFIX + k: (torch.randn(s, generator=gen) * 0.02).to(dtype)
             for k, s in official_shapes(LMConfig.from_upstream(raw)).items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    torch.save(state, folder / "model.pt")
    return f"model.pt {(folder / 'model.pt').stat().st_size / 2**30:.2f} GiB"


def run_convert(src: Path, dst: Path, quantize: int | None) -> str:
    from levo_batch.lm.convert import convert

    convert(src, dst, dtype="bf16", quantize=quantize)
    size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    return f"{len(list(dst.glob('*.safetensors')))} file(s), {size / 2**30:.2f} GiB"


def run_load(path: Path, dtype: str | None) -> str:
    from levo_batch.lm.loading import load_lm

    loaded = load_lm(path, dtype=dtype)
    return f"{loaded.source_format} {loaded.dtype} id={loaded.model_id}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--stored", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                        help="dtype of the random model.pt")
    parser.add_argument("--quantize", type=int, choices=[4, 8], default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lm_ckpt_bench_"))
    official, converted = work / "official", work / "mlx"
    phases = [
        ("write official", write_official, (official, args.preset, args.stored)),
        ("convert bf16" + (f" q{args.quantize}" if args.quantize else ""), run_convert,
         (official, converted, args.quantize)),
        ("load official as bf16", run_load, (official, "bf16")),
        ("load conversion", run_load, (converted, None)),
    ]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    print(f"preset {args.preset} ({PRESETS[args.preset]}), workdir {work}")
    try:
        for name, fn, fn_args in phases:
            proc = ctx.Process(target=_phase, args=(name, fn, fn_args, queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"phase '{name}' failed (exit code {proc.exitcode})")
            label, seconds, peak, info = queue.get()
            print(f"{label:28s} {seconds:8.2f} s   peak anon RSS {peak:7.2f} GiB   {info}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
