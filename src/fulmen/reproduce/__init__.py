"""``fulmen reproduce RUN_DIR``: rebuild a recorded run from its record and prove it is the same.

A fit with a logger leaves ``run.json`` (command, flags, seed, versions, environment), a copy of
its code (``code/``) and an audit log (``checkpoints.jsonl``) with a digest of every checkpoint.
``reproduce`` uses them in this order:

1. ``environment``: what differs between the recorded environment and this one (versions,
   packages, devices, the variables that decide determinism); a run that cannot run here (no
   script, a GPU run on a machine without one) is refused with one line;
2. ``workdir``: a fresh work folder with the code as it was (the snapshot, each file checked
   against its recorded SHA-256; or the recorded git commit plus its diff when there is no
   snapshot);
3. ``rerun``: the recorded command, run there with the recorded determinism variables, every
   output kept inside the work folder (``fulmen.run_dir.redirected``) and the data checked
   against the record before training (``fulmen.fingerprint``); ``--until-checkpoint`` /
   ``--until-step`` stop it early (``fulmen.reproduce._until``);
4. ``compare``: each checkpoint's state digest (its content without its own audit record) against
   the original's, in order; where one differs, the first interval of the weight digests
   recorded along the run that differs, and the entries of the two files that differ.

Nothing in the original run folder is written.
"""

from __future__ import annotations

from fulmen.reproduce.run import ReproduceError, reproduce

__all__ = ["ReproduceError", "reproduce"]
