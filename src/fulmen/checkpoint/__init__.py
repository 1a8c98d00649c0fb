"""Checkpoint files: atomic writes, content digests, an audit trail, and safe loading."""

from fulmen.checkpoint.audit import chain_head, read_log, read_weight_digests
from fulmen.checkpoint.background import AsyncCheckpointIO, CheckpointIO
from fulmen.checkpoint.integrity import DIGEST_ALGORITHM, state_digest, tensor_digest
from fulmen.checkpoint.io import (
    CHECKPOINT_FORMAT,
    CheckpointFileError,
    DiskFullError,
    IncompatibleCheckpointError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    atomic_save,
    load_checkpoint,
    verify_digest,
    write_checkpoint,
)
from fulmen.checkpoint.verify import Problem, verify_run

__all__ = [
    "CHECKPOINT_FORMAT",
    "DIGEST_ALGORITHM",
    "AsyncCheckpointIO",
    "CheckpointFileError",
    "CheckpointIO",
    "DiskFullError",
    "IncompatibleCheckpointError",
    "Problem",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "atomic_save",
    "chain_head",
    "load_checkpoint",
    "read_log",
    "read_weight_digests",
    "state_digest",
    "tensor_digest",
    "verify_digest",
    "verify_run",
    "write_checkpoint",
]
