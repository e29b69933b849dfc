"""The parity tests follow the fixtures' own metadata: renamed cases (what a recorder run with other case names
writes) pass unchanged."""

import json
import os
import subprocess
import sys
from pathlib import Path

from fixture_meta import decoder_meta, encoder_meta, lm_cases

REPO = Path(__file__).resolve().parents[1]

PARITY = ["tests/test_lm_model.py", "tests/test_lm_generate.py", "tests/test_decoder.py", "tests/test_decoder_flow.py",
          "tests/test_decoder_vae.py", "tests/test_decoder_vq.py"]
SELECT = ("upstream or fixture or crossfaded or duration or conditions or resume_mid_song or windows_chain "
          "or estimator_step0 or flow_inputs")
"""The tests that compare against recorded data; the rest of those files use the fixtures only as inputs."""


def renames() -> dict[str, str]:
    """Every case name and case file of the recorded sets -> another one."""
    names = [job["name"] for job in lm_cases()["jobs"]] + [case["name"] for case in decoder_meta()["cases"]]
    out = {name: f"other_{i}_{name[::-1]}" for i, name in enumerate(names)}
    out.update({f"case_{old}.npz": f"case_{new}.npz" for old, new in out.items()})
    out[encoder_meta()["file"]] = "other_" + encoder_meta()["file"]
    return out


def rename_strings(value, mapping: dict[str, str]):
    """`value` (parsed JSON) with every string that is a key of `mapping` replaced."""
    if isinstance(value, dict):
        return {k: rename_strings(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [rename_strings(v, mapping) for v in value]
    return mapping.get(value, value) if isinstance(value, str) else value


def renamed_copy(fixtures: Path, dst: Path) -> Path:
    """The fixture folders with links to the original files, case files and metadata renamed."""
    mapping = renames()
    for folder in ("lm_tiny", "decoder_tiny", "encoder_tiny", "qwen2_tokenizer"):
        for src in (fixtures / folder).iterdir():
            target = dst / folder / mapping.get(src.name, src.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix == ".json":
                meta = json.loads(src.read_text())
                if rename_strings(meta, mapping) != meta:
                    target.write_text(json.dumps(rename_strings(meta, mapping)))
                    continue
            os.symlink(src.resolve(), target)
    return dst


def test_parity_tests_pass_on_renamed_cases(fixtures, tmp_path):
    root = renamed_copy(fixtures, tmp_path / "fixtures")
    first_case = lm_cases()["jobs"][0]["name"]
    assert not (root / "lm_tiny" / f"case_{first_case}.npz").exists()
    assert first_case not in (root / "lm_tiny" / "cases.json").read_text()
    env = {**os.environ, "LEVO_FIXTURES": str(root)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SELECT, *PARITY],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary
