"""Command line: upstream flag semantics, help text, exit codes, and generate.sh as a drop-in."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from levo_batch.cli import AUTO_BATCH_CAP, build_parser, gen_type_of, main
from levo_batch.lm.config import LMConfig
from levo_batch.lm.sampling import SamplingParams

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
    assert args.batch_size is None and args.kv_cache == "auto"  # batch auto: sized from free device memory
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
                 "--runtime-dir", "--lm-dtype", "--decoder-compile", "--kv-cache", "--checkpoint-every",
                 "--temperature", "--top-k", "--greedy", "--device", "--shard", "--shards", "--gpus",
                 "--no-low-mem", "--lm-version"):
        assert flag in text
    assert "no-op" in text  # says what --not_use_flash_attn does
    for command in ("convert", "download", "doctor", "merge"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--" in capsys.readouterr().out


def test_invalid_jsonl_exits_2_with_file_line_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC}) + "\n{not json\n")
    assert main(["generate", str(tmp_path), str(bad), str(tmp_path / "out")]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_dir_exits_2(tmp_path, capsys):
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"idx": "a", "gt_lyric": LYRIC}) + "\n")
    assert main(["generate", str(tmp_path / "nope"), str(good), str(tmp_path / "out")]) == 2
    assert "checkpoint folder" in capsys.readouterr().err


def test_generate_sh_forwards_to_the_cli(tiny, tmp_path):
    ckpt, jobs, runtime = tiny
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["sh", str(REPO / "generate.sh"), str(ckpt), str(jobs), str(tmp_path / "out"), "--bgm",
                           "--dry-run", "--runtime-dir", str(runtime)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "a: new: LM, then decode" in done.stdout and "generation type bgm" in done.stdout


def fake_hub(monkeypatch) -> list:
    """Records every download instead of reaching the hub; the runtime repo's files appear as empty files."""
    import huggingface_hub

    from levo_batch import fetch
    from levo_batch.assets import EVERYTHING, runtime_assets
    from levo_batch.runtime import RuntimePaths

    calls = []

    def snapshot(repo, **kw):
        calls.append((repo, kw))
        if repo == "lglg666/SongGeneration-Runtime":
            for asset in runtime_assets(RuntimePaths(kw["local_dir"]), EVERYTHING, None):
                asset.path.parent.mkdir(parents=True, exist_ok=True)
                asset.path.touch()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr(fetch, "check_reachable", lambda url: None)
    monkeypatch.setattr(fetch, "fetch_auto_prompt", lambda dest: calls.append(("auto-prompt", dest)))
    return calls


def test_download_fetches_only_inference_assets(tmp_path, monkeypatch, capsys):
    from levo_batch.runtime import RuntimePaths

    calls = fake_hub(monkeypatch)
    assert main(["download", "--runtime-dir", str(tmp_path / "rt"), "--model", "v2-large",
                 "--ckpt-dir", str(tmp_path / "ck")]) == 0
    (runtime_repo, runtime_kw), (model_repo, model_kw), auto = calls
    assert runtime_repo == "lglg666/SongGeneration-Runtime" and runtime_kw["local_dir"] == (tmp_path / "rt").resolve()
    assert "ckpt/model_septoken/*" in runtime_kw["allow_patterns"]
    assert not any("encode-s12k" in p for p in runtime_kw["allow_patterns"])
    assert model_repo == "lglg666/SongGeneration-v2-large" and model_kw["local_dir"] == tmp_path / "ck"
    assert auto == ("auto-prompt", RuntimePaths.resolve(tmp_path / "rt").auto_prompt)
    assert "auto-prompt library ->" in capsys.readouterr().out


def test_download_accepts_the_mlx_community_names(tmp_path, monkeypatch):
    from levo_batch.download import MLX_COMMUNITY_CHECKPOINTS

    calls = fake_hub(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert len(MLX_COMMUNITY_CHECKPOINTS) == 10
    for name in ("mlx-community/SongGeneration-v2-large-4bit", "mlx-community/SongGeneration-v2-medium"):
        assert main(["download", "--runtime-dir", str(tmp_path / "rt"), "--model", name]) == 0
    assert [(repo, kw["local_dir"]) for repo, kw in calls if repo.startswith("mlx-community/")] == [
        ("mlx-community/SongGeneration-v2-large-4bit", Path("ckpt/SongGeneration-v2-large-4bit")),
        ("mlx-community/SongGeneration-v2-medium", Path("ckpt/SongGeneration-v2-medium")),
    ]
    with pytest.raises(SystemExit):
        main(["download", "--model", "mlx-community/SongGeneration-v2-huge"])


def test_convert_records_an_overridden_lm_version(tmp_path):
    from lm_checkpoints import write_official_checkpoint
    from levo_batch.lm.loading import load_lm

    src = write_official_checkpoint(tmp_path / "renamed_v1", version="v1")
    assert main(["convert", str(src), str(tmp_path / "mlx"), "--dtype", "fp32", "--lm-version", "v1"]) == 0
    assert load_lm(tmp_path / "mlx").config.version == "v1"


def test_convert_command_writes_a_loadable_mlx_folder(tmp_path, capsys):
    from lm_checkpoints import write_official_checkpoint
    from levo_batch.lm.loading import load_lm

    src = write_official_checkpoint(tmp_path / "official", seed=1)
    assert main(["convert", str(src), str(tmp_path / "mlx"), "--dtype", "fp32", "--quantize", "8"]) == 0
    assert (tmp_path / "mlx" / "config.json").exists()
    loaded = load_lm(tmp_path / "mlx")
    assert loaded.source_format == "mlx" and loaded.config.quantization["bits"] == 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fixtures):
    """A tiny official checkpoint, a complete tiny runtime and a two-song jsonl."""
    import tiny_runtime
    from lm_checkpoints import write_official_checkpoint

    root = tmp_path_factory.mktemp("cli")
    ckpt = write_official_checkpoint(root / "ck", seed=1)
    runtime = tiny_runtime.build(root / "rt", fixtures)
    jobs = root / "ok.jsonl"
    jobs.write_text("".join(json.dumps({"idx": i, "gt_lyric": LYRIC}) + "\n" for i in ("a", "b")))
    return ckpt, jobs, runtime.root


def messages(err: str) -> list[str]:
    """stderr lines without the timestamps that log lines carry when stderr is not a terminal."""
    return [re.sub(r"^\[[\d :-]+\] ", "", line) for line in err.splitlines()]


def generate(tiny, out: Path, *flags: str) -> int:
    ckpt, jobs, runtime = tiny
    return main(["generate", str(ckpt), str(jobs), str(out), "--runtime-dir", str(runtime), *flags])


def test_user_errors_exit_2_without_traceback(tiny, tmp_path, capsys):
    from levo_batch.lock import RunLock

    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out"):
        assert generate(tiny, tmp_path / "out", "--tokens-only") == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err.lower() or str(os.getpid()) in err
    assert "Traceback" not in err


BAD_OPTIONS = [
    (["--max-duration", "100000"], "--max-duration 100000: must be a number of seconds >= 0.04 (one frame) and at "
                                   "most the checkpoint's max_dur 150 s"),
    (["--max-duration", "0"], "--max-duration 0: must be"),
    (["--max-duration", "nan"], "--max-duration nan: must be"),
    (["--cfg-coef", "nan"], "--cfg-coef nan: must be a finite number"),
    (["--temperature", "-1"], "--temperature -1.0: must be a finite number > 0"),
    (["--temperature", "inf"], "--temperature inf: must be a finite number > 0"),
    (["--top-k", "0"], "--top-k 0: must be a whole number >= 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0: must be a whole number >= 1"),
    (["--decoder-batch", "0"], "--decoder-batch 0: must be a whole number >= 1"),
]


@pytest.mark.parametrize("flags,message", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_options_exit_2_before_anything_is_created(tiny, tmp_path, capsys, flags, message):
    """Issue 10, items 1 and 8: these were accepted, or failed with a traceback after loading (or after the LM)."""
    assert generate(tiny, tmp_path / "out", *flags) == 2
    lines = messages(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


def test_every_bad_option_is_reported_at_once(tiny, tmp_path, capsys):
    assert generate(tiny, tmp_path / "out", "--decoder-batch", "0", "--top-k", "0", "--cfg-coef", "inf") == 2
    lines = messages(capsys.readouterr().err)
    assert [line.split(":")[1].split()[0] for line in lines] == ["--decoder-batch", "--top-k", "--cfg-coef"]


def test_checkpoint_and_assets_are_checked_up_front(tiny, tmp_path, capsys):
    ckpt, jobs, runtime = tiny
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    assert main(["generate", str(empty), str(jobs), str(tmp_path / "out"), "--runtime-dir", str(runtime)]) == 2
    err = capsys.readouterr().err
    assert f"no LeVo LM checkpoint in {empty}" in err
    assert f"levo-batch download --model v2-large --ckpt-dir {empty}" in err
    assert main(["generate", str(ckpt), str(jobs), str(tmp_path / "out"), "--runtime-dir", str(tmp_path)]) == 2
    lines = messages(capsys.readouterr().err)
    assert [line.split(" not found")[0] for line in lines] == [
        "error: Qwen2 tokenizer", "error: septoken decoder weights", "error: VAE config", "error: VAE weights"]
    assert main(["generate", str(ckpt), str(jobs), str(tmp_path / "out"), "--runtime-dir", str(tmp_path),
                 "--decode-only"]) == 2
    assert "--decode-only: no finished tokens" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_save_dir_that_is_a_file_exits_2(tiny, tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("not a folder")
    assert generate(tiny, target) == 2
    assert messages(capsys.readouterr().err) == [
        f"error: SAVE_DIR {target} is a file, not a folder; pass a folder path (it is created if missing)"]


def test_readme_option_table_states_the_parser_defaults():
    """README's table restates the defaults and the auto batch cap for readers; the parser (reading
    `GenerationSettings`, `SamplingParams` and the LM's slot bounds) is the source, so the table must follow it."""
    cell = r"(?:[^|\\]|\\.)+"  # a table cell; `\|` is an escaped pipe inside it
    readme = (REPO / "README.md").read_text()
    rows = re.findall(rf"^\| `(--[a-z-]+){cell}\| ({cell}) \|", readme, re.M)
    table = {flag: default.strip() for flag, default in rows}
    generate = build_parser().parse_args(["generate", "ck", "in.jsonl", "out"])
    for flag in ("--seed", "--kv-cache", "--decoder-batch", "--checkpoint-every"):
        assert table[flag] == str(getattr(generate, flag[2:].replace("-", "_"))), flag
    assert table["--temperature"] == f"{SamplingParams.temperature}, {SamplingParams.top_k}, {LMConfig.cfg_coef}"
    assert f"({AUTO_BATCH_CAP})" in re.search(r"^\| `--batch-size.*$", readme, re.M).group()
