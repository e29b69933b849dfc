"""levo_batch: batch renderer for LeVo 2 (SongGeneration)."""

__version__ = "0.1.0"
