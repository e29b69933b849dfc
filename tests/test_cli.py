"""Command line: upstream flag semantics, help text, exit codes, and generate.sh as a drop-in."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from levo_batch.cli import build_parser, gen_type_of, main

REPO = Path(__file__).resolve().parents[1]
LYRIC = "[intro-short] ; [verse] Hello there.Small song ; [outro-short]"


def upstream_gen_type(argv: list[str]) -> str:
    """Upstream generate.sh: one pass per flag in the order separate, bgm, vocal; the last match wins."""
    gen_type = "mixed"
    for flag, name in (("--separate", "separate"), ("--bgm", "bgm"), ("--vocal", "vocal")):
        if flag in argv:
            gen_type = name
    return gen_type


FLAG_SETS = [list(p) for n in range(4) for c in itertools.combinations(["--separate", "--bgm", "--vocal"], n)
             for p in itertools.permutations(c)]


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: " ".join(f) or "none")
def test_generation_type_precedence_matches_upstream(flags):
    for where in ("after", "between"):
        argv = ["generate", "ck", "in.jsonl", "out", *flags] if where == "after" else \
               ["generate", "ck", *flags, "in.jsonl", "out"]
        args = build_parser().parse_args(argv)
        assert gen_type_of(args) == upstream_gen_type(flags)
        assert (args.ckpt_dir, args.input_jsonl, args.save_dir) == (Path("ck"), Path("in.jsonl"), "out")


def test_upstream_memory_and_attention_flags_are_accepted():
    args = build_parser().parse_args(["generate", "ck", "in.jsonl", "out", "--low_mem", "--not_use_flash_attn"])
    assert args.low_mem and args.not_use_flash_attn


def test_batch_size_is_a_count_or_auto_and_kv_cache_a_precision(capsys):
    parse = build_parser().parse_args
    args = parse(["generate", "ck", "in.jsonl", "out"])
    assert args.batch_size is None and args.kv_cache == "bf16"  # auto: sized from free device memory
    args = parse(["generate", "ck", "in.jsonl", "out", "--batch-size", "32", "--kv-cache", "int8"])
    assert args.batch_size == 32 and args.kv_cache == "int8"
    assert parse(["generate", "ck", "in.jsonl", "out", "--batch-size", "auto"]).batch_size is None
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            parse(["generate", "ck", "in.jsonl", "out", "--batch-size", bad])
        assert f"expected a positive number of songs or 'auto', got '{bad}'" in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--bgm", "--vocal", "--separate", "--low_mem", "--not_use_flash_attn", "--seed", "--batch-size",
                 "--max-duration", "--tokens-only", "--decode-only", "--overwrite", "--dry-run", "--strict",
                 "--runtime-dir", "--lm-dtype", "--decoder-compile", "--kv-cache", "--checkpoint-every", "--temperature",
                 "--top-k", "--greedy", "--device", "--shard", "--shards", "--gpus"):
        assert flag in text
    assert "no-op" in text  # says what --not_use_flash_attn does
    for command in ("convert", "download", "merge"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--" in capsys.readouterr().out


def test_invalid_jsonl_exits_2_with_file_line_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC}) + "\n{not json\n")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert main(["generate", str(ckpt), str(bad), str(tmp_path / "out")]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_dir_exits_2(tmp_path, capsys):
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC}) + "\n")
    assert main(["generate", str(tmp_path / "nope"), str(good), str(tmp_path / "out")]) == 2
    assert "checkpoint folder" in capsys.readouterr().err


def test_generate_sh_forwards_to_the_cli(tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"idx": "song1", "gt_lyric": LYRIC}) + "\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["sh", str(REPO / "generate.sh"), "ck", str(good), str(tmp_path / "out"), "--bgm",
                           "--dry-run"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "song1: new: LM, then decode" in done.stdout and "generation type bgm" in done.stdout


def test_download_fetches_only_inference_assets(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append((repo, kw)))
    assert main(["download", "--runtime-dir", str(tmp_path / "rt"), "--model", "v2-large",
                 "--ckpt-dir", str(tmp_path / "ck")]) == 0
    (runtime_repo, runtime_kw), (model_repo, model_kw) = calls
    assert runtime_repo == "lglg666/SongGeneration-Runtime" and runtime_kw["local_dir"] == (tmp_path / "rt").resolve()
    assert "ckpt/model_septoken/*" in runtime_kw["allow_patterns"]
    assert not any("encode-s12k" in p for p in runtime_kw["allow_patterns"])
    assert model_repo == "lglg666/SongGeneration-v2-large" and model_kw["local_dir"] == tmp_path / "ck"
    assert "new_auto_prompt.pt" in capsys.readouterr().out


def test_convert_command_writes_a_loadable_mlx_folder(tmp_path, capsys):
    from lm_checkpoints import write_official_checkpoint
    from levo_batch.lm.loading import load_lm

    src = write_official_checkpoint(tmp_path / "official", seed=1)
    assert main(["convert", str(src), str(tmp_path / "mlx"), "--dtype", "fp32", "--quantize", "8"]) == 0
    assert (tmp_path / "mlx" / "config.json").exists()
    loaded = load_lm(tmp_path / "mlx")
    assert loaded.source_format == "mlx" and loaded.config.quantization["bits"] == 8


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    from levo_batch.lock import RunLock

    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC}) + "\n")
    (tmp_path / "ck").mkdir()
    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out"):
        assert main(["generate", str(tmp_path / "ck"), str(good), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err.lower() or str(os.getpid()) in err
    assert "Traceback" not in err
