"""The output jsonl, also when shards share a SAVE_DIR: upstream's single file, assembled from what is on disk.

`SAVE_DIR/jsonl/{input name}.jsonl` must stay exactly upstream's: every finished item in input order. It is
always rebuilt from the files, never from one run's memory, so any number of shards (of any count, or an
unsharded run) can render into one SAVE_DIR:

- a song counts when all its flacs exist (atomic writes: existence means complete), whoever rendered it;
- its line comes from its provenance record (`levo_batch.provenance`: the input item and prompt facts of the
  audio that is on disk), so the file describes that audio even after the input jsonl was edited.

A shard assembles after it has released its lock, and only if no other shard is still running: the last one to
see no live lock sees every song, and two that finish together write the same bytes (atomically).
`levo-batch merge SAVE_DIR INPUT.jsonl` does the same by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import provenance
from .jobs import Job
from .outputs import is_done, output_item, output_jsonl_path, write_output_jsonl
from .shards import live_shards


def finished_items(jobs: Sequence[Job], save_dir: Path, save_dir_text: str, stems: tuple[str, ...]) -> list[dict]:
    """The output line of every finished job with a readable provenance record, in input order."""
    items = []
    for job in jobs:
        if not is_done(save_dir, job.idx, stems):
            continue
        try:
            record = provenance.read(save_dir, job.idx)
        except ValueError:
            continue
        if record is not None:
            items.append(output_item(record.item, save_dir_text, record.facts))
    return items


def assemble(jobs: Sequence[Job], save_dir: Path, input_path: Path, save_dir_text: str,
             stems: tuple[str, ...]) -> int:
    """Write the whole output jsonl from the files; returns how many songs it lists."""
    items = finished_items(jobs, save_dir, save_dir_text, stems)
    if items:
        write_output_jsonl(output_jsonl_path(save_dir, input_path), items)
    return len(items)


def assemble_if_last(jobs: Sequence[Job], save_dir: Path, input_path: Path, save_dir_text: str,
                     stems: tuple[str, ...]) -> bool:
    """Assemble the output jsonl unless another shard is still running (it will assemble when it ends)."""
    if live_shards(save_dir):
        return False
    assemble(jobs, save_dir, input_path, save_dir_text, stems)
    return True
