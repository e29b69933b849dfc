"""The output jsonl when shards share a SAVE_DIR: one part per shard, assembled into upstream's single file.

`SAVE_DIR/jsonl/{input name}.jsonl` must stay exactly upstream's: every finished item in input order. Shards
finish at different times, so each writes its own lines to `SAVE_DIR/jsonl/.parts/{input name}.shard-K-of-N.jsonl`
(nobody else writes that file), and the whole file is assembled from the input's order and what is on disk:

- a song counts when all its flacs exist (atomic writes: existence means complete), whoever rendered it;
- its line comes from the newest part that has it, else it is rebuilt from the token record's prompt facts
  (songs rendered by an unsharded run, or by a shard whose part was lost).

A shard assembles after it has released its lock, and only if no other shard is still running: every shard
writes its part before releasing, so the last one to see no live lock has every part, and two that finish
together write the same bytes (atomically). `levo-batch merge SAVE_DIR INPUT.jsonl` does the same by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .jobs import Job
from .outputs import is_done, output_item, output_jsonl_path, write_output_jsonl
from .shards import Shard, live_shards
from .store import TokenStore

PARTS_DIR = ".parts"


def finished_items(jobs: Sequence[Job], save_dir: Path, save_dir_text: str, stems: tuple[str, ...]) -> dict[str, dict]:
    """idx -> output line of every finished job, rebuilt from the files (input order kept)."""
    store = TokenStore(save_dir)
    items = {}
    for job in jobs:
        if is_done(save_dir, job.idx, stems):
            record = store.load_any(job.idx)
            extra = record.meta.get("prompt") if record is not None else None
            items[job.idx] = output_item(job.item, save_dir_text, extra)
    return items


def part_path(save_dir: Path, input_path: Path, shard: Shard) -> Path:
    final = output_jsonl_path(save_dir, input_path)
    return final.parent / PARTS_DIR / f"{final.stem}.shard-{shard.index}-of-{shard.count}.jsonl"


def write_part(save_dir: Path, input_path: Path, shard: Shard, items: dict[str, dict]) -> None:
    write_output_jsonl(part_path(save_dir, input_path, shard), list(items.values()))


def part_items(save_dir: Path, input_path: Path) -> dict[str, dict]:
    """idx -> line from every part of this input (any N), the newest part winning a song two parts have."""
    folder = output_jsonl_path(save_dir, input_path).parent / PARTS_DIR
    prefix = f"{output_jsonl_path(save_dir, input_path).stem}.shard-"
    parts = [p for p in folder.glob(f"{prefix}*.jsonl")] if folder.is_dir() else []
    items: dict[str, dict] = {}
    for path in sorted(parts, key=lambda p: p.stat().st_mtime_ns):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = json.loads(line)
                items[item["idx"]] = item
    return items


def assemble(jobs: Sequence[Job], save_dir: Path, input_path: Path, save_dir_text: str,
             stems: tuple[str, ...]) -> int:
    """Write the whole output jsonl from the parts and the files; returns how many songs it lists."""
    from_parts = part_items(save_dir, input_path)
    missing = [job for job in jobs if job.idx not in from_parts]
    rebuilt = finished_items(missing, save_dir, save_dir_text, stems)
    items = []
    for job in jobs:
        if job.idx in rebuilt:
            items.append(rebuilt[job.idx])
        elif job.idx in from_parts and is_done(save_dir, job.idx, stems):
            items.append(from_parts[job.idx])
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
