"""``StochasticWeightAveraging``: average the weights of the last epochs, on top of ``torch.optim.swa_utils``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from fulmen.callbacks.base import Callback
from fulmen.errors import warn_once

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_STRATEGIES = ("cos", "linear")


class _ParamCopy(nn.Module):
    """A copy of a system's parameters only (in ``system.parameters()`` order).

    ``AveragedModel`` deep-copies the module it is given; copying these tensors rather than the
    system keeps the trainer, data and anything else the system refers to out of the copy.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        super().__init__()
        self.params = nn.ParameterList(
            [nn.Parameter(p.detach().clone(), requires_grad=False) for p in params]
        )


class StochasticWeightAveraging(Callback):
    """Stochastic Weight Averaging (Izmailov et al., 2018) for the last epochs of training.

    From epoch ``swa_epoch_start`` on (an int counts epochs from 1, so ``1`` is the first epoch;
    a float is that fraction of ``max_epochs``: ``int(swa_epoch_start * max_epochs)``), the
    optimizer's schedulers are replaced by a ``torch.optim.swa_utils.SWALR`` that anneals each
    parameter group to ``swa_lrs`` over ``annealing_epochs`` epochs (``annealing_strategy``
    ``"cos"`` or ``"linear"``) and then holds it; it steps once per epoch. At the end of each of
    those epochs the weights are added to a running average (``AveragedModel``; ``avg_fn``
    replaces the equal-weight mean). When training ends, the averaged weights are copied into
    the system and, if it has BatchNorm layers, their running statistics are recomputed with
    ``torch.optim.swa_utils.update_bn`` over ``trainer.train_dataloader`` (each batch goes
    through the system's transfer hooks and precision; ``forward`` gets the batch's first element
    when the batch is a list or tuple, else the whole batch).

    The average lives on ``device`` (default: where the system's parameters are). Its state
    (the averaged weights by parameter name, and how many epochs were averaged) is saved in
    checkpoints through ``state_dict``.

    Differences from PyTorch Lightning: ``device=None`` keeps the average next to the model
    (Lightning defaults to the CPU); BatchNorm statistics are recomputed with ``update_bn`` over
    ``trainer.train_dataloader`` instead of an extra training epoch.
    """

    def __init__(
        self,
        swa_lrs: float | Sequence[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        avg_fn: Callable[[Tensor, Tensor, Tensor | int], Tensor] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        lrs = [swa_lrs] if isinstance(swa_lrs, (int, float)) and not isinstance(swa_lrs, bool) else swa_lrs
        if (
            not isinstance(lrs, Sequence)
            or not lrs
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in lrs)
        ):
            raise ValueError(
                f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}): expected a positive float, or a list of positive "
                f"floats with one per parameter group of the optimizer."
            )
        if isinstance(swa_epoch_start, bool) or not (
            (isinstance(swa_epoch_start, int) and swa_epoch_start >= 1)
            or (isinstance(swa_epoch_start, float) and 0.0 < swa_epoch_start <= 1.0)
        ):
            raise ValueError(
                f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}): expected an int >= 1 (the epoch, "
                f"counting from 1) or a float in (0, 1] (a fraction of max_epochs)."
            )
        if (
            isinstance(annealing_epochs, bool)
            or not isinstance(annealing_epochs, int)
            or annealing_epochs < 0
        ):
            raise ValueError(
                f"StochasticWeightAveraging(annealing_epochs={annealing_epochs!r}): expected an int >= 0."
            )
        if annealing_strategy not in _STRATEGIES:
            raise ValueError(
                f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}): expected 'cos' or 'linear'."
            )
        if avg_fn is not None and not callable(avg_fn):
            raise ValueError(
                f"StochasticWeightAveraging(avg_fn={avg_fn!r}): expected None or a function "
                f"(averaged, current, num_averaged) -> tensor."
            )
        try:
            self.device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"StochasticWeightAveraging(device={device!r}): expected None, a torch.device or a device string "
                f"such as 'cpu' or 'cuda:0' ({err})."
            ) from err
        self.swa_lrs: float | list[float] = (
            float(swa_lrs) if isinstance(swa_lrs, (int, float)) else [float(x) for x in lrs]
        )
        self.swa_epoch_start = swa_epoch_start
        self.annealing_epochs = annealing_epochs
        self.annealing_strategy = annealing_strategy
        self.avg_fn = avg_fn
        self.swa_start = 0  # first averaged epoch, counting from 0 (set when fitting starts)
        self.swa_end: int | None = None  # last averaged epoch, counting from 0 (None: no max_epochs)
        self.average_model: AveragedModel | None = None
        self.swa_scheduler: SWALR | None = None
        self._names: list[str] = []
        self._latest_update_epoch = -1
        self._pending: dict[str, Any] | None = None

    @property
    def n_averaged(self) -> int:
        """How many epochs' weights are in the average."""
        if self.average_model is None:
            return int(self._pending["n_averaged"]) if self._pending else 0
        return int(self.average_model.n_averaged.item())  # host read; not on the hot path

    # -- hooks -----------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"StochasticWeightAveraging works with one optimizer; configure_optimizers returned "
                f"{len(trainer.optimizers)}."
            )
        groups = len(trainer.optimizers[0].param_groups)
        if isinstance(self.swa_lrs, list) and len(self.swa_lrs) not in (1, groups):
            raise ValueError(
                f"StochasticWeightAveraging(swa_lrs={self.swa_lrs!r}): expected one learning rate per parameter "
                f"group of the optimizer ({groups}), got {len(self.swa_lrs)}."
            )
        max_epochs = trainer.max_epochs
        if isinstance(self.swa_epoch_start, float):
            if max_epochs is None:
                raise ValueError(
                    f"StochasticWeightAveraging(swa_epoch_start={self.swa_epoch_start}) is a fraction of max_epochs, "
                    f"but the Trainer has no max_epochs. Set Trainer(max_epochs=...) or give swa_epoch_start as an "
                    f"epoch number (an int)."
                )
            first = int(self.swa_epoch_start * max_epochs)
        else:
            first = self.swa_epoch_start
        self.swa_start = max(first - 1, 0)
        self.swa_end = None if max_epochs is None else max_epochs - 1
        if max_epochs is not None and self.swa_start > max_epochs - 1:
            warn_once(
                f"StochasticWeightAveraging(swa_epoch_start={self.swa_epoch_start!r}) starts at epoch "
                f"{self.swa_start + 1}, after the last epoch (max_epochs={max_epochs}), so no weights are averaged.",
                key="swa-never-starts",
            )
        params = list(system.parameters())
        if self.average_model is None or len(list(self.average_model.module.parameters())) != len(params):
            holder = _ParamCopy(params)
            self.average_model = AveragedModel(
                holder, device=self.device, avg_fn=self.avg_fn, use_buffers=False
            )
            self._names = [name for name, _ in system.named_parameters()]
            self._latest_update_epoch = -1
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._load_average(pending)

    def _in_window(self, epoch: int) -> bool:
        return self.swa_start <= epoch and (self.swa_end is None or epoch <= self.swa_end)

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        if self.swa_scheduler is not None or not self._in_window(trainer.current_epoch):
            return
        optimizer = trainer.optimizers[0]
        lrs: Any = self.swa_lrs  # SWALR takes a float or one float per parameter group
        if isinstance(lrs, list) and len(lrs) == 1:
            lrs = lrs[0]
        strategy: Any = self.annealing_strategy
        self.swa_scheduler = SWALR(
            optimizer, swa_lr=lrs, anneal_epochs=self.annealing_epochs, anneal_strategy=strategy
        )
        from fulmen.trainer._optim import SchedulerConfig

        configs = trainer.lr_scheduler_configs
        name = next((c.name for c in configs if c.name), None)
        # In place: the loop reads this list again when the epoch's steps and its end come.
        configs[:] = [SchedulerConfig(self.swa_scheduler, interval="epoch", frequency=1, name=name)]

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        epoch = trainer.current_epoch
        if self.average_model is None or not self._in_window(epoch) or epoch == self._latest_update_epoch:
            return
        self.average_model.update_parameters(_ParamsOf(system))
        self._latest_update_epoch = epoch

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        if self.average_model is None or self._latest_update_epoch < 0:
            return  # training ended before the averaging started
        with torch.no_grad():
            for dst, src in zip(system.parameters(), self.average_model.module.parameters()):
                dst.copy_(src.to(dst.device))
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in system.modules()):
            return
        loader = getattr(trainer, "train_dataloader", None)
        if callable(loader) and not hasattr(loader, "__iter__"):
            loader = loader()
        if loader is None:
            warn_once(
                f"StochasticWeightAveraging: {type(system).__name__} has BatchNorm layers, but their running "
                f"statistics were not recomputed for the averaged weights because the trainer does not expose its "
                f"training data (trainer.train_dataloader). Recompute them yourself with "
                f"torch.optim.swa_utils.update_bn(loader, system) before evaluating.",
                key="swa-no-update-bn",
            )
            return
        precision = trainer.strategy.precision
        with precision.forward_context():
            update_bn(_prepared_batches(loader, trainer, system), system)

    # -- state -------------------------------------------------------------------------------------
    def average_state_dict(self) -> dict[str, Tensor]:
        """The averaged weights by parameter name (empty before fitting starts)."""
        if self.average_model is None:
            return dict(self._pending["average"]) if self._pending else {}
        return dict(zip(self._names, (p.detach() for p in self.average_model.module.parameters())))

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": self.n_averaged,
            "average": self.average_state_dict(),
            "latest_update_epoch": self._latest_update_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.average_model is None:
            self._pending = dict(state_dict)  # applied when fitting starts and the model is known
            self._latest_update_epoch = int(state_dict.get("latest_update_epoch", -1))
            return
        self._load_average(state_dict)

    def _load_average(self, state: dict[str, Any]) -> None:
        assert self.average_model is not None
        average = state.get("average", {})
        if not average:
            return
        missing = [n for n in self._names if n not in average]
        if missing:
            raise KeyError(
                f"StochasticWeightAveraging.load_state_dict: the saved average has no weights for {missing[:5]} "
                f"(saved: {sorted(average)[:5]}...); it was saved for a different model."
            )
        with torch.no_grad():
            for name, p in zip(self._names, self.average_model.module.parameters()):
                src = average[name]
                if tuple(src.shape) != tuple(p.shape):
                    raise ValueError(
                        f"StochasticWeightAveraging.load_state_dict: {name!r} has shape {tuple(src.shape)} in the "
                        f"saved average, expected {tuple(p.shape)}."
                    )
                p.copy_(src.to(p.device))
            self.average_model.n_averaged.fill_(int(state["n_averaged"]))
        self._latest_update_epoch = int(state.get("latest_update_epoch", self._latest_update_epoch))


def _prepared_batches(loader: Any, trainer: Trainer, system: System) -> Iterator[Any]:
    """The loader's batches as training sees them: through the system's transfer hooks, on the
    device, with inputs in the precision's dtype."""
    device = trainer.strategy.root_device
    convert = trainer.strategy.precision.convert_input
    for batch in loader:
        batch = system.on_before_batch_transfer(batch, 0)
        batch = system.transfer_batch_to_device(batch, device, 0)
        yield convert(system.on_after_batch_transfer(batch, 0))


class _ParamsOf(nn.Module):
    """The system as ``AveragedModel.update_parameters`` should see it: its parameters, and no
    buffers (the copy holds none; BatchNorm statistics are recomputed at the end instead)."""

    def __init__(self, system: nn.Module) -> None:
        super().__init__()
        self._target = [system]  # a list, so the system is not registered as a submodule

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self._target[0].parameters(recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        return iter(())
