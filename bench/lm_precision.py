"""LM precision: how far fp16 and bf16 logits are from float32 (the reference upstream's fp16 run approximates).

Upstream runs its LM in float16 (weights and autocast). This measures, for the same weights and inputs,
the teacher-forced logits of the model cast to fp16 and to bf16 against the float32 model:
relative RMS error (RMS of the difference / RMS of the fp32 logits), max abs error, how often the argmax
(every codebook and position) agrees with fp32, and the mean overlap of the top-5000 sets (upstream's
sampling set for codebook 0).

    python bench/lm_precision.py --fixtures --cpu      # golden lm_tiny weights and inputs (~1.5 min on 2 cores)
    python bench/lm_precision.py --size small --cpu    # a mid-size random model (~40 min on 2 busy cores)
    python bench/lm_precision.py --size large --frames 200   # real v2-large geometry on the GPU (~16 GB fp32)
    python bench/lm_precision.py --size medium --frames 200  # real v2-medium geometry on the GPU

With `--fixtures` it also replays upstream's recorded greedy runs at each precision.

Random weights follow bench/common.py (N(0, 1/fan_in), unit norms), prefix inputs are random embedding rows
of the model's own tables, and the audio columns are random codes: every song position of a real run is
covered (prefix of 952 positions, then `--frames` pattern columns).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from common import LM_SIZES, find_fixtures, name_seed
from mlx.utils import tree_flatten, tree_unflatten

from levo_batch.lm.config import LMConfig
from levo_batch.lm.model import LeVoLM

SIZES = {**LM_SIZES, "small": dict(dim=1024, intermediate_size=2816, num_heads=8, num_layers=8, num_layers_sub=4)}
"""`small`: real head_dim (128) and MLP ratio, fewer and narrower layers, so it fits two CPU cores."""
DTYPES = {"fp16": mx.float16, "bf16": mx.bfloat16}
TOP_K = 5000


def random_model(cfg: LMConfig, seed: int) -> LeVoLM:
    model = LeVoLM(cfg)
    params = []
    for key, value in tree_flatten(model.parameters()):
        if key.endswith("norm.weight"):
            new = mx.ones(value.shape)
        elif key.endswith(".bias"):
            new = mx.zeros(value.shape)
        else:
            new = mx.random.normal(value.shape, key=mx.random.key(name_seed(seed, key))) * value.shape[-1] ** -0.5
        params.append((key, new.astype(mx.float32)))
        mx.eval(params[-1][1])
    model.update(tree_unflatten(params))
    model.eval()
    return model


def random_inputs(model: LeVoLM, cfg: LMConfig, frames: int, seed: int):
    """Prefix streams built from the model's own conditioning tables (as real prefixes are), random codes."""
    gen = np.random.default_rng(seed)
    text = model.condition_provider.conditioners["description"].output_proj.weight
    rows = mx.array(gen.integers(0, text.shape[0], (1, cfg.prefix_len)).astype(np.int32))
    prefix = mx.take(text, rows, axis=0)
    codes = mx.array(gen.integers(0, cfg.code_size, (1, cfg.code_depth, frames)).astype(np.int32))
    return [(prefix, prefix, codes)]


def fixture_cases(fixtures: Path):
    """The golden lm_tiny model (float32, official keys) and the five recorded teacher-forcing inputs."""
    import json

    import yaml
    from safetensors.numpy import load_file

    root = fixtures / "lm_tiny"
    cfg = LMConfig.from_upstream(yaml.safe_load((root / "config.yaml").read_text()))
    model = LeVoLM(cfg)
    weights = {k[len("audiolm."):]: v for k, v in load_file(str(root / "model.safetensors")).items()}
    wanted = dict(tree_flatten(model.parameters()))
    model.update(tree_unflatten([(k, mx.array(weights[k])) for k in wanted]))
    model.eval()
    cases = []
    for job in json.loads((root / "cases.json").read_text())["jobs"]:
        a = np.load(root / f"case_{job['name']}.npz")
        p1 = mx.array(np.concatenate([a["cond_description"], a["cond_prompt_audio_1"], a["cond_type_info"]], 1))
        p2 = mx.array(np.concatenate([a["cond_description"], a["cond_prompt_audio_2"], a["cond_type_info"]], 1))
        cases.append((p1, p2, mx.array(np.repeat(a["tf_sequence"], 2, axis=0))))
    return cfg, model, cases


def greedy_agreement(fixtures: Path, dtype) -> tuple[int, int, float]:
    """Upstream's recorded greedy runs (float32) replayed by our generator at `dtype`: (songs identical, songs,
    fraction of equal tokens, a song of another length counting 0). Greedy decisions flip on near-ties, so this
    is the end-to-end view."""
    import json

    from levo_batch.lm.generate import MLXTokenGenerator
    from levo_batch.lm.sampling import SamplingParams
    from levo_batch.lm.tokenizer import TextTokenizers
    from levo_batch.contracts import SongRequest

    cfg, model, _ = fixture_cases(fixtures)
    model.set_dtype(dtype)
    root = fixtures / "lm_tiny"
    cases = json.loads((root / "cases.json").read_text())
    jobs = cases["jobs"]
    songs, want = [], {}
    for job in jobs:
        a = np.load(root / f"case_{job['name']}.npz")
        inputs = job["codeclm_generate_inputs"]
        prompt = None if a["prompt_tokens"].size == 0 else a["prompt_tokens"][0]
        songs.append(SongRequest(job["name"], inputs["lyrics"][0], inputs["descriptions"][0], prompt, 0))
        want[job["name"]] = a["greedy_tokens"][0]

    class Sink:
        def __init__(self):
            self.tokens = {}

        def checkpoint(self, idx, state): ...

        def finished(self, idx, tokens):
            self.tokens[idx] = tokens

        def progress(self, idx, step, total): ...

    sink = Sink()
    seconds = cases["generation"]["duration_s"]
    gen = MLXTokenGenerator(model, cfg, TextTokenizers.from_dir(fixtures / "qwen2_tokenizer"), model_id="lm_tiny",
                            sampling=SamplingParams(greedy=True), batch_size=len(songs), max_duration=seconds)
    gen.generate(songs, sink)
    same = sum(np.array_equal(sink.tokens[k], v) for k, v in want.items())
    equal = [float(np.mean(sink.tokens[k][:, : v.shape[1]] == v)) if sink.tokens[k].shape == v.shape else 0.0
             for k, v in want.items()]
    return same, len(want), float(np.mean(equal))


def logits_of(model: LeVoLM, cases, dtype) -> list[np.ndarray]:
    out = []
    for p1, p2, codes in cases:
        y = model(p1.astype(dtype), p2.astype(dtype), codes)
        out.append(np.array(y.astype(mx.float32)))
    return out


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    r = np.concatenate([x.reshape(-1, x.shape[-1]) for x in ref])
    g = np.concatenate([x.reshape(-1, x.shape[-1]) for x in got])
    rel = float(np.sqrt(((g - r) ** 2).mean() / (r**2).mean()))
    top1 = float((g.argmax(-1) == r.argmax(-1)).mean())
    k = min(TOP_K, r.shape[-1] - 1)
    ref_top = np.argpartition(-r, k, axis=-1)[:, :k]
    got_top = np.argpartition(-g, k, axis=-1)[:, :k]
    overlap = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ref_top, got_top)]))
    return {"rel_rms": rel, "max_abs": float(np.abs(g - r).max()), "top1_agree": top1, "top5000_overlap": overlap}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", action="store_true", help="golden lm_tiny weights and inputs")
    p.add_argument("--fixtures-dir", default=None)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--frames", type=int, default=50, help="audio columns after the 952-position prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="run on the MLX CPU backend")
    args = p.parse_args()
    logging.getLogger("levo_batch").setLevel(logging.ERROR)  # the fixtures' long texts are cut on purpose
    if args.cpu:
        mx.set_default_device(mx.cpu)
    started = time.monotonic()
    if args.fixtures:
        cfg, model, cases = fixture_cases(find_fixtures(args.fixtures_dir))
        label = "lm_tiny fixtures (5 cases)"
    else:
        cfg = LMConfig(**SIZES[args.size])
        model = random_model(cfg, args.seed)
        cases = random_inputs(model, cfg, args.frames, args.seed)
        label = f"random {args.size} (dim {cfg.dim}, {cfg.num_layers}+{cfg.num_layers_sub} layers), {args.frames} frames"
    ref = logits_of(model, cases, mx.float32)
    rms = float(np.sqrt(np.mean(np.concatenate([x.ravel() for x in ref]) ** 2)))
    print(f"{label}; device {mx.default_device()}; fp32 logit RMS {rms:.3f}")
    fp32 = tree_flatten(model.parameters())
    results = {}
    for name, dtype in DTYPES.items():
        model.set_dtype(dtype)  # each precision cast from the float32 weights, never from the other one
        results[name] = compare(ref, logits_of(model, cases, dtype))
        model.update(tree_unflatten(fp32))
        print(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in results[name].items()))
    if args.fixtures:
        for name, dtype in (("fp32", mx.float32), *DTYPES.items()):
            same, n, equal = greedy_agreement(find_fixtures(args.fixtures_dir), dtype)
            print(f"  {name}: upstream's greedy runs reproduced for {same}/{n} songs ({equal:.1%} of tokens equal)")
    ratio = results["bf16"]["rel_rms"] / max(results["fp16"]["rel_rms"], 1e-30)
    print(f"  bf16/fp16 error ratio {ratio:.2f} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
