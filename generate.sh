#!/bin/sh
# Drop-in for upstream SongGeneration's generate.sh:
#   sh generate.sh CKPT_DIR INPUT.jsonl SAVE_DIR [--bgm|--vocal|--separate] [--low_mem] [--not_use_flash_attn] [levo-batch options]
# Everything is forwarded to `levo-batch generate`; see `levo-batch generate --help`.
here=$(cd "$(dirname "$0")" && pwd)
if command -v levo-batch >/dev/null 2>&1; then
    exec levo-batch generate "$@"
elif [ -x "$here/.venv/bin/levo-batch" ]; then
    exec "$here/.venv/bin/levo-batch" generate "$@"
else
    exec python3 -m levo_batch generate "$@"
fi
