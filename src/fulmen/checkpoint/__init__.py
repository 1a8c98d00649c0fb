"""Checkpoint files: atomic writes and safe loading."""

from fulmen.checkpoint.io import atomic_save, load_checkpoint

__all__ = ["atomic_save", "load_checkpoint"]
