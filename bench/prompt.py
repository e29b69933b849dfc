"""Time preparing one audio prompt: read, htdemucs separation (whole file), cut, and both token encoders.

Builds a runtime folder with random weights of the real geometry (htdemucs 42 M parameters, the encoder-side
tensors of the septoken and 1rvq checkpoints, via bench_prompt_encoders) or of the test suite's tiny
geometry, writes a synthetic stereo prompt of each requested length, and reports per prompt: separation
(uncached), encoders, the whole `PromptPreparer.prepare` with a cold separation cache, and with a warm one.

    python bench/prompt.py --size tiny                  # seconds, any machine
    python bench/prompt.py --seconds 10 30 180          # real size, default device (cuda / mps / cpu)
    python bench/prompt.py --device cpu --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench_prompt_encoders import real_files
from common import find_fixtures
from levo_batch.jobs import Job
from levo_batch.prompts.prepare import PromptPreparer
from levo_batch.prompts.separation import HTDEMUCS_HPARAMS
from levo_batch.runtime import RuntimePaths
from levo_batch.contracts import SAMPLE_RATE

TINY_DEMUCS = dict(HTDEMUCS_HPARAMS, channels=4, bottom_channels=16, t_layers=1, t_heads=2, dconv_comp=2)


def build_runtime(root: Path, fixtures: Path, tiny: bool) -> RuntimePaths:
    """Runtime layout with random htdemucs + encoder checkpoints (encoder files are linked, not copied)."""
    from demucs.htdemucs import HTDemucs

    rt = RuntimePaths(root.resolve())
    if tiny:
        files = {"rvq1": fixtures / "encoder_tiny" / "rvq1_model.safetensors",
                 "septoken": fixtures / "decoder_tiny" / "septoken_model.safetensors"}
    else:
        files = real_files(fixtures, root)
    for name, dst in (("rvq1", rt.rvq1), ("septoken", rt.septoken)):
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        dst.symlink_to(files[name].resolve())
    if not rt.htdemucs.is_file():
        torch.manual_seed(0)
        rt.htdemucs.parent.mkdir(parents=True, exist_ok=True)
        torch.save(HTDemucs(**(TINY_DEMUCS if tiny else HTDEMUCS_HPARAMS)).state_dict(), rt.htdemucs)
        rt.htdemucs_yaml.write_text("models: ['htdemucs']\n")
    return rt


def write_prompt(path: Path, seconds: float) -> Path:
    """Tones plus noise, 16-bit stereo 48 kHz: content does not change the cost, length does."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(int(seconds * 1000))
    x = 0.3 * np.sin(2 * np.pi * np.array([[220.0], [330.0]]) * t) + 0.05 * rng.standard_normal((2, t.size))
    sf.write(str(path), x.T.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


def best_of(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0], help="prompt file lengths")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "levo_bench_prompt")
    parser.add_argument("--fixtures", type=Path, default=None)
    args = parser.parse_args()

    tiny = args.size == "tiny"
    fixtures = find_fixtures(args.fixtures)
    work = args.workdir / args.size
    work.mkdir(parents=True, exist_ok=True)
    rt = build_runtime(work / "runtime", fixtures, tiny)
    config = json.loads((fixtures / "encoder_tiny" / "w2v2_config_tiny.json").read_text()) if tiny else None
    cache = work / "cache"
    prep = PromptPreparer(rt, device=args.device, cache_dir=cache, encoder_config=config,
                          demucs_hparams=TINY_DEMUCS if tiny else None)
    print(f"device {prep.device}, size {args.size}")
    start = time.perf_counter()
    separator = prep.separator
    print(f"load htdemucs        {time.perf_counter() - start:7.2f} s")
    start = time.perf_counter()
    rvq1, sep = prep.encoders
    print(f"load encoders        {time.perf_counter() - start:7.2f} s")

    for secs in args.seconds:
        path = write_prompt(work / f"prompt_{secs:g}s.wav", secs)
        job = Job(idx="bench", line=1, gt_lyric="", descriptions=None, prompt_audio_path=path,
                  auto_prompt_audio_type=None, item={})
        mix, sr = sf.read(str(path), dtype="float32", always_2d=True)
        mix = np.ascontiguousarray(mix.T)
        prep.prepare(job, 0)  # warm-up (kernels, allocator)
        separator.cache_dir = None
        t_sep = best_of(lambda: separator.vocals(mix, sr), args.repeats)
        full, vocal, bgm, _ = prep.stems(path)
        dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(prep.device)  # noqa: E731
        t_enc = best_of(lambda: (rvq1.encode(dev(full)), sep.encode(dev(vocal), dev(bgm))), args.repeats)
        t_cold = best_of(lambda: prep.prepare(job, 0), args.repeats)
        separator.cache_dir = cache / "separation"
        prep.prepare(job, 0)
        t_warm = best_of(lambda: prep.prepare(job, 0), args.repeats)
        print(f"{secs:6.1f} s prompt: separation {t_sep:7.2f} s | encoders {t_enc:6.2f} s | "
              f"prepare cold {t_cold:7.2f} s | prepare cached {t_warm:6.2f} s", flush=True)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
