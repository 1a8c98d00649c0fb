"""File modes: files fulmen writes get the mode a plain ``open(path, "w")`` would give.

Atomic writes go through a temporary file; ``tempfile.mkstemp`` (and some libraries) create it
with mode 0600 whatever the umask, and the rename keeps that mode, so a ``metrics.csv`` or
``hparams.yaml`` in a shared lab folder would be unreadable to the group and to a TensorBoard or
serving process running as another user. ``plain_file_mode()`` is what ``open`` would use under
the process's umask; the writers set it on the temporary file before renaming it into place.
"""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``),
    else by setting and restoring it (not thread-safe, but only on other systems)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()
