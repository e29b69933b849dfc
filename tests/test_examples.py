"""The cluster examples users copy: they parse, and the shard count each one gives levo-batch is the one its
scheduler runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from levo_batch.cli import build_parser
from levo_batch.shards import resolve_shard

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_slurm_array_script_is_valid_and_every_task_maps_to_its_shard():
    script = (EXAMPLES / "slurm.sbatch").read_text()
    subprocess.run(["bash", "-n", str(EXAMPLES / "slurm.sbatch")], check=True)
    first, last = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)$", script, re.M).groups())
    assert "#SBATCH --gres=gpu:1" in script and "generate.sh" in script
    count = last - first + 1
    shards = [resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first),
                                         "SLURM_ARRAY_TASK_COUNT": str(count)}) for task in range(first, last + 1)]
    assert [(s.index, s.count) for s in shards] == [(k, count) for k in range(count)]


def test_kubernetes_indexed_job_passes_its_completions_as_the_shard_count():
    job = yaml.safe_load((EXAMPLES / "k8s-indexed-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    command = container["command"]
    assert command[:2] == ["levo-batch", "generate"]
    args = build_parser().parse_args(command[1:])
    assert args.shards == spec["completions"]
    last = resolve_shard(None, args.shards, {"JOB_COMPLETION_INDEX": str(spec["completions"] - 1)})
    assert (last.index, last.count) == (spec["completions"] - 1, spec["completions"])
