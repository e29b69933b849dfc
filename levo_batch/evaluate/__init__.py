"""Scoring a finished render the way LeVo 2 is judged: lyric accuracy (PER/WER/CER of Whisper transcripts),
Audiobox Aesthetics, and facts about the audio. The models come from the optional `eval` extra; `run.evaluate`
is the entry point, `cli` only parses arguments (kept import-light so `levo-batch --help` stays fast)."""
