"""Seeding every random number generator a run uses, including in dataloader workers."""

from __future__ import annotations

import numbers
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

_SEED_ENV = "FULMEN_GLOBAL_SEED"
_WORKERS_ENV = "FULMEN_SEED_WORKERS"

_MAX_SEED = 2**32 - 1


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device); return the seed.

    With ``workers=True``, the Trainer gives dataloaders without a ``worker_init_fn`` one that
    seeds ``random`` and NumPy in each worker from torch's per-worker seed, so augmentations that
    use them differ between workers and repeat between runs. The seed is also exported as
    ``FULMEN_GLOBAL_SEED`` so processes started later (workers, other ranks) can read it.
    """
    if seed is None:
        env = os.environ.get(_SEED_ENV)
        if env is None:
            seed = random.SystemRandom().randint(0, _MAX_SEED)
        else:
            try:
                seed = int(env)
            except ValueError:
                raise ValueError(
                    f"seed_everything(): {_SEED_ENV}={env!r} in the environment is not an int; set it to a "
                    f"number between 0 and 2**32 - 1, or pass the seed."
                ) from None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = int(seed)  # NumPy integers too
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed_everything(seed={seed!r}): the seed must be an int between 0 and 2**32 - 1.")
    os.environ[_SEED_ENV] = str(seed)
    os.environ[_WORKERS_ENV] = "1" if workers else "0"
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def seed_workers_requested() -> bool:
    return os.environ.get(_WORKERS_ENV) == "1"


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random`` and NumPy in a dataloader worker from torch's seed for that worker.

    torch already gives each worker ``base_seed + worker_id``, where ``base_seed`` comes from the
    main process's generator, so this is reproducible whenever the main process was seeded.
    """
    seed = torch.initial_seed() % 2**32
    ss = np.random.SeedSequence([seed, worker_id])
    np.random.seed(ss.generate_state(1)[0])
    random.seed(int(ss.generate_state(2, dtype=np.uint64)[1]))


class RNGState:
    """The state of every random number generator a run uses (Python, NumPy, torch CPU and CUDA,
    and any extra ``torch.Generator`` given, e.g. a DataLoader's), taken when built and put back by
    ``restore``. ``state_dict()`` is plain data (tensors, ints, lists) for checkpoints."""

    def __init__(self, generators: Sequence[torch.Generator] = ()) -> None:
        self.python = random.getstate()
        self.numpy: Any = np.random.get_state()
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.generators = list(generators)
        self.generator_states = [g.get_state() for g in self.generators]

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda)
        for g, state in zip(self.generators, self.generator_states):
            g.set_state(state)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.python
        name, keys, pos, has_gauss, cached = self.numpy
        return {
            "python": {"version": version, "state": list(internal), "gauss": gauss},
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "torch": self.torch,
            "cuda": list(self.cuda) if self.cuda is not None else None,
            "generators": list(self.generator_states),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> RNGState:
        """An RNGState that ``restore`` puts back; ``generators`` get the saved extra states in order."""
        self = cls.__new__(cls)
        py = state["python"]
        self.python = (py["version"], tuple(py["state"]), py["gauss"])
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        self.numpy = (npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
        self.torch = state["torch"]
        self.cuda = state.get("cuda")
        self.generators = list(generators)
        self.generator_states = list(state.get("generators") or [])[: len(self.generators)]
        return self
