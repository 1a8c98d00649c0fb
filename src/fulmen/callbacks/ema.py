"""``EMA``: an exponential moving average of the weights, updated after optimizer steps."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class EMA(Callback):
    """Keep ``ema = decay * ema + (1 - decay) * weights`` for the system's floating-point parameters.

    The average starts as a copy of the weights when fitting starts and is updated after every
    ``every_n_steps``-th optimizer step (batches that only accumulate gradients do not count),
    with one ``torch._foreach_lerp_`` call: no per-parameter Python loop and no wait for the
    device. With ``warmup`` the decay of the ``n``-th update (counting from 0) is
    ``min(decay, (1 + n) / (10 + n))``, so early, poor weights fade out quickly.

    ``validate_with_ema``: validation (also the sanity check, and ``trainer.validate``/``test``
    after fit) runs with the averaged weights; the training weights are put back when it ends.
    This costs one extra copy of the weights while validation runs. ``apply_at_end`` copies the
    average into the system when training ends.

    ``average_state_dict()`` is the system's ``state_dict`` with the averaged parameters (and
    copies of the current buffers), ready for ``system.load_state_dict``. The average is saved
    in checkpoints through ``state_dict`` and restored by ``load_state_dict`` (before fitting
    starts, it is applied when the parameters are known).

    The average lives on each parameter's device, in its dtype, except that float16 and bfloat16
    parameters are averaged in float32 (in 16 bits, ``(1 - decay) * difference`` rounds to zero). PyTorch Lightning has no built-in EMA
    callback; this one follows the usual recipe.
    """

    def __init__(
        self,
        decay: float = 0.999,
        every_n_steps: int = 1,
        validate_with_ema: bool = True,
        apply_at_end: bool = False,
        warmup: bool = True,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA(decay={decay!r}): expected a number in [0, 1], such as 0.999.")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"EMA(every_n_steps={every_n_steps!r}): expected an int >= 1.")
        for flag, value in (
            ("validate_with_ema", validate_with_ema),
            ("apply_at_end", apply_at_end),
            ("warmup", warmup),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"EMA({flag}={value!r}): expected True or False.")
        self.decay = float(decay)
        self.every_n_steps = every_n_steps
        self.validate_with_ema = validate_with_ema
        self.apply_at_end = apply_at_end
        self.warmup = warmup
        self.num_updates = 0
        self._system: weakref.ref[nn.Module] | None = None
        self._names: list[str] = []
        self._params: list[Tensor] = []
        self._ema: list[Tensor] = []
        self._backup: list[Tensor] | None = None
        self._groups: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] = ([], [], [], [])
        self._last_step = -1
        self._pending: dict[str, Any] | None = None

    # -- the average -------------------------------------------------------------------------------
    def _attached_to(self, system: nn.Module) -> bool:
        return self._system is not None and self._system() is system

    def _attach(self, system: nn.Module) -> None:
        named = [(n, p) for n, p in system.named_parameters() if p.is_floating_point()]
        same = len(named) == len(self._params) and all(p is q for (_, p), q in zip(named, self._params))
        if self._attached_to(system) and same:
            # Fitting again: keep averaging, next to the parameters (which may have moved).
            self._ema = [e.to(device=p.device, dtype=_average_dtype(p)) for e, p in zip(self._ema, self._params)]
            self._group()
            return
        self._system = weakref.ref(system)
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._ema = [p.detach().clone().to(_average_dtype(p)) for p in self._params]
        self._group()
        self.num_updates = 0
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._load(pending)

    def _decay_now(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def update(self) -> None:
        """Fold the current weights into the average (called after optimizer steps)."""
        weight = 1.0 - self._decay_now()  # a Python float: no device sync
        same_e, same_p, up_e, up_p = self._groups
        with torch.no_grad():
            if same_e:
                torch._foreach_lerp_(same_e, same_p, weight)
            if up_e:  # 16-bit parameters: averaged in float32, where (1 - decay) * diff does not round away
                torch._foreach_lerp_(up_e, [p.float() for p in up_p], weight)
        self.num_updates += 1

    def _group(self) -> None:
        """Split the parameters into those averaged in their own dtype and 16-bit ones averaged in float32."""
        pairs = list(zip(self._ema, self._params))
        same = [(e, p) for e, p in pairs if e.dtype == p.dtype]
        up = [(e, p) for e, p in pairs if e.dtype != p.dtype]
        self._groups = ([e for e, _ in same], [p for _, p in same], [e for e, _ in up], [p for _, p in up])

    def average_state_dict(self) -> dict[str, Tensor]:
        """The system's ``state_dict`` with averaged parameters, as copies (empty before fitting)."""
        system = self._system() if self._system is not None else None
        if system is None:
            return dict(self._pending["average"]) if self._pending else {}
        average = {id(p): e.to(p.dtype) for p, e in zip(self._params, self._ema)}  # the model's own dtypes
        out: dict[str, Tensor] = {}
        for name, value in system.state_dict(keep_vars=True).items():
            value = average.get(id(value), value)  # tied parameters appear under every name
            out[name] = value.detach().clone()
        return out

    # -- hooks -------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        self._attach(system)

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # no optimizer step in this batch (gradient accumulation, or a skipped batch)
        last, self._last_step = self._last_step, step
        # A multiple of every_n_steps reached (manual optimization may take several steps a batch).
        if step // self.every_n_steps > last // self.every_n_steps:
            self.update()

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        # A step taken after the last batch's hook (a loader of unknown length that ended inside
        # an accumulation group) is folded in here.
        self.on_train_batch_end(trainer, system, None, None, -1)

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        if self.apply_at_end and self._attached_to(system):
            with torch.no_grad():
                torch._foreach_copy_(self._params, self._ema)

    def _swap_in(self, system: nn.Module) -> None:
        if not self.validate_with_ema or self._backup is not None or not self._attached_to(system):
            return
        with torch.no_grad():
            self._backup = [p.detach().clone() for p in self._params]
            torch._foreach_copy_(self._params, self._ema)

    def _swap_out(self) -> None:
        if self._backup is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(self._params, self._backup)
        self._backup = None

    def on_validation_start(self, trainer: Trainer, system: System) -> None:
        self._swap_in(system)

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        self._swap_out()

    def on_test_start(self, trainer: Trainer, system: System) -> None:
        self._swap_in(system)

    def on_test_end(self, trainer: Trainer, system: System) -> None:
        self._swap_out()

    def on_exception(self, trainer: Trainer, system: System, exception: BaseException) -> None:
        self._swap_out()  # a failure during validation must not leave the averaged weights in place

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "average": self.average_state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._system is None or self._system() is None:
            self._pending = dict(state_dict)  # applied when fitting starts and the parameters are known
            self.num_updates = int(state_dict.get("num_updates", 0))
            return
        self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        average = state.get("average", {})
        self.num_updates = int(state.get("num_updates", 0))
        if not average:
            return
        missing = [n for n in self._names if n not in average]
        if missing:
            raise KeyError(
                f"EMA.load_state_dict: the saved average has no values for {missing[:5]}; it was saved for a "
                f"different model (saved names start with {sorted(average)[:5]})."
            )
        with torch.no_grad():
            for name, e in zip(self._names, self._ema):
                src = average[name]
                if tuple(src.shape) != tuple(e.shape):
                    raise ValueError(
                        f"EMA.load_state_dict: {name!r} has shape {tuple(src.shape)} in the saved average, expected "
                        f"{tuple(e.shape)}."
                    )
                e.copy_(src)


def _average_dtype(p: Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
