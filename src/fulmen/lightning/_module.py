"""``LightningModule``: ``fulmen.System`` that also runs Lightning's optimization and mode hooks.

A Lightning script may override hooks that a plain ``fulmen.System`` refuses; here they are
called, decided once per class (a hook not overridden costs nothing per step):

- ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)`` (typically a learning-rate
  warm-up). fulmen runs ``training_step`` and ``backward`` itself, before the step, so the closure
  it passes only returns the loss already computed; the ``optimizer`` it passes steps through the
  run's precision (loss scaling under 16-mixed). A step the override does not take is not taken.
- ``optimizer_zero_grad(epoch, batch_idx, optimizer)``: called where Lightning calls it, after
  ``training_step`` and before the backward of the first batch of each accumulation group
  (``on_before_zero_grad`` fires just before it), instead of fulmen's zeroing after the step.
  Under ``fulmen.lightning.Trainer`` this is where gradients are zeroed whether or not it is
  overridden (Lightning's order of ``on_before_zero_grad``); under ``fulmen.Trainer`` only when
  overridden.
- ``backward(loss, *args, **kwargs)``: called instead of ``loss.backward()`` with the loss as
  Lightning passes it (multiplied by the loss scale under 16-mixed), between
  ``on_before_backward`` and ``on_after_backward``; ``manual_backward`` calls it too.
- ``on_validation_model_eval``, ``on_test_model_eval`` and ``on_predict_model_eval``: always
  called, as in Lightning, to switch to eval mode (before ``on_*_start``; the defaults call
  ``self.eval()``); ``on_validation_model_train`` / ``on_test_model_train``, when overridden,
  instead of fulmen's restore of each module's mode (after ``on_*_end``);
  ``on_validation_model_zero_grad`` (default: ``self.zero_grad()``) before each validation inside
  ``fit`` that does not interrupt an accumulation group.
- ``configure_gradient_clipping(optimizer, gradient_clip_val=..., gradient_clip_algorithm=...)``
  receives the Trainer's values by keyword, None when not given to the Trainer (Lightning's call).

These are also found on the instance (``model.optimizer_step = fn``, as Lightning's own tests
patch hooks), decided when each run is set up; a hook set to None is not called.

Lightning's behaviour of methods ``fulmen.System`` also has:

- ``self.optimizers()`` returns ``LightningOptimizer`` wrappers
  (``fulmen.lightning.core.optimizer``): instances of the wrapped optimizer's class
  (``isinstance(opt, torch.optim.SGD)``), stepping through fulmen's manual optimization.
- ``toggle_optimizer(opt)`` freezes the parameters of the run's *other* optimizers only;
  parameters no optimizer holds keep their ``requires_grad``.
- ``clip_gradients(opt)`` without values clips with the Trainer's ``gradient_clip_val`` /
  ``gradient_clip_algorithm``; a value that contradicts one given to the Trainer is refused.
- ``module.trainer = trainer`` also attaches the LightningModules nested inside it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fulmen.errors import FlagError
from fulmen.system import System

_MODE_HOOKS = (
    "on_validation_model_eval",
    "on_validation_model_train",
    "on_test_model_eval",
    "on_test_model_train",
    "on_predict_model_eval",
)
#: Called in every run, overridden or not (Lightning calls them; the defaults switch to eval mode).
_EVAL_MODE_HOOKS = frozenset({"on_validation_model_eval", "on_test_model_eval", "on_predict_model_eval"})
#: Lightning hooks found on the instance too, and the flag the loops read for each.
_STEP_HOOK_FLAGS = (
    ("optimizer_step", "_optimizer_step_hook"),
    ("optimizer_zero_grad", "_zero_grad_hook"),
    ("backward", "_backward_hook"),
)


class LightningModule(System):
    _allowed_lightning_hooks = ("optimizer_step", "optimizer_zero_grad", "backward", *_MODE_HOOKS)
    _model_mode_hooks = _EVAL_MODE_HOOKS
    _logs_hyperparams_by_default = False  # Lightning: only after save_hyperparameters()
    __jit_unused_properties__: list[str] = [*System.__jit_unused_properties__, "_param_requires_grad_state"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "optimizer_step" in own:
            cls._optimizer_step_hook = True
        if "optimizer_zero_grad" in own:
            cls._zero_grad_hook = True
        if "backward" in own:
            cls._backward_hook = True
        modes = {name for name in _MODE_HOOKS if name in own}
        if modes:
            cls._model_mode_hooks = cls._model_mode_hooks | modes

    def _on_run_setup(self) -> None:
        """Hooks set on the instance (``model.optimizer_step = fn``) count as overridden for this
        run, as in Lightning; a hook set to None is not called (the mode hooks: fulmen restores
        the modes itself). Under ``fulmen.lightning.Trainer`` (``LoopRules.lightning_hook_calls``)
        gradients are zeroed in Lightning's place, through ``optimizer_zero_grad``, overridden or not."""
        own = self.__dict__
        cls = type(self)
        rules = getattr(self._trainer, "rules", None)
        lightning_order = bool(getattr(rules, "lightning_hook_calls", False))
        for name, flag in _STEP_HOOK_FLAGS:
            own[flag] = bool(getattr(cls, flag)) or callable(own.get(name))
            if flag == "_zero_grad_hook" and lightning_order:
                own[flag] = own.get(name, cls.optimizer_zero_grad) is not None
        modes = set(cls._model_mode_hooks) | {n for n in _MODE_HOOKS if callable(own.get(n))}
        own["_model_mode_hooks"] = frozenset(n for n in modes if n not in own or callable(own[n]))

    def _train_step_variant(self, parts: Any, start: int) -> Any:
        """The training step of this epoch (``fulmen.trainer._step.build_step`` asks, under automatic
        optimization): with Lightning's ``optimizer_zero_grad`` / ``backward`` / ``optimizer_step``
        overridden, fulmen's step with them in its slots (``fulmen.lightning._step``); else None,
        fulmen's own."""
        if not (self._zero_grad_hook or self._backward_hook or self._optimizer_step_hook):
            return None
        from fulmen.lightning._step import lightning_step

        return lightning_step(self, parts, start)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's default: ``optimizer.step(closure=optimizer_closure)``."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Lightning's default: ``optimizer.zero_grad()``."""
        optimizer.zero_grad()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's default: ``loss.backward(*args, **kwargs)`` (the loss is already scaled
        under 16-mixed)."""
        loss.backward(*args, **kwargs)

    def on_validation_model_eval(self) -> None:
        """Lightning's default: eval mode for validation."""
        self.eval()

    def on_validation_model_train(self) -> None:
        """Lightning's default when called: train mode after validation (fulmen, when the hook is
        not overridden, restores each module's own mode instead)."""
        self.train()

    def on_test_model_eval(self) -> None:
        """Lightning's default: eval mode for testing."""
        self.eval()

    def on_test_model_train(self) -> None:
        """Lightning's default when called: train mode after testing."""
        self.train()

    def on_predict_model_eval(self) -> None:
        """Lightning's default: eval mode for prediction."""
        self.eval()

    def on_validation_model_zero_grad(self) -> None:
        """Lightning's default, called before each validation inside ``fit`` that does not
        interrupt an accumulation group: free the gradients (``self.zero_grad()``)."""
        self.zero_grad()

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Called before each optimizer step with the Trainer's ``gradient_clip_val`` /
        ``gradient_clip_algorithm`` (None when not given); the default clips with them
        (``self.clip_gradients``)."""
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    # -- Lightning's behaviour of fulmen.System's methods (see the module docstring) ----------------
    @property
    def trainer(self) -> Any:
        if self._trainer is None and not self.__dict__.get("_exporting"):
            raise RuntimeError(
                f"{type(self).__name__} is not attached to a `Trainer`: `self.trainer` is only available while "
                f"Trainer.fit/validate/test/predict runs this module (or a module containing it)."
            )
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        for module in self.modules():  # nested LightningModules (an ensemble's members) too
            if isinstance(module, System):
                module._trainer = trainer

    def optimizers(self, use_fulmen_optimizer: bool = True, use_pl_optimizer: bool | None = None) -> Any:
        """The optimizer(s) from ``configure_optimizers`` (one, or a list when several), as
        ``LightningOptimizer`` wrappers (the same objects on every call of a run);
        ``use_pl_optimizer=False`` (Lightning's name; ``use_fulmen_optimizer=False`` too) gives the
        torch optimizers themselves."""
        from fulmen.lightning.core.optimizer import LightningOptimizer

        if use_pl_optimizer is None:
            use_pl_optimizer = use_fulmen_optimizer
        trainer = self.trainer
        opts: list[Any] = list(trainer.optimizers)
        if use_pl_optimizer:
            strategy = trainer.strategy
            wrapped = strategy.__dict__.get("_lightning_optimizers")
            if (
                wrapped is None
                or len(wrapped) != len(opts)
                or any(w._optimizer is not o or w._system is not self for w, o in zip(wrapped, opts))
                or any(w._stepper is None or w._stepper._trainer is not trainer for w in wrapped)
            ):
                wrapped = [LightningOptimizer._for_run(o, trainer, self) for o in opts]
                strategy.__dict__["_lightning_optimizers"] = wrapped  # (where Lightning keeps them)
            opts = list(wrapped)
        return opts[0] if len(opts) == 1 else opts

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze the parameters of the run's other optimizers (``requires_grad=False``) until
        ``untoggle_optimizer``; ``optimizer``'s keep their setting, and parameters that no optimizer
        holds are left alone (a frozen layer stays frozen, a layer trained by none keeps its
        gradients)."""
        opt = getattr(optimizer, "optimizer", optimizer)
        mine = {id(p) for group in opt.param_groups for p in group["params"]}
        if self._toggled is None:
            others = list(self._trainer.optimizers) if self._trainer is not None else []
            self._toggled = {}
            for o in [*others, opt]:
                for group in getattr(o, "optimizer", o).param_groups:
                    for p in group["params"]:
                        self._toggled.setdefault(p, p.requires_grad)
        for p, flag in self._toggled.items():
            p.requires_grad_(id(p) in mine and flag)

    @property
    def _param_requires_grad_state(self) -> dict[Any, bool]:
        """Lightning's name for what ``toggle_optimizer`` saved: each parameter's ``requires_grad``
        before it (empty when nothing is toggled)."""
        return self._toggled or {}

    def clip_gradients(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip ``optimizer``'s gradients. A value not given is the Trainer's (``gradient_clip_val``,
        else no clipping; ``gradient_clip_algorithm``, else ``"norm"``); a value given that differs
        from one given to the Trainer is refused (``FlagError``, a ``MisconfigurationException``)."""
        flags = getattr(self._trainer, "flags", None) or {}
        trainer_val, trainer_algorithm = flags.get("gradient_clip_val"), flags.get("gradient_clip_algorithm")
        if gradient_clip_val is None:
            gradient_clip_val = trainer_val if trainer_val is not None else 0.0
        elif trainer_val is not None and trainer_val != gradient_clip_val:
            raise FlagError(
                f"You have set `Trainer(gradient_clip_val={trainer_val!r})` and have passed "
                f"`clip_gradients(gradient_clip_val={gradient_clip_val!r})`. Please use only one of them: the Trainer's "
                f"value is what configure_gradient_clipping receives, so pass that one on (or leave it out of the Trainer)."
            )
        if gradient_clip_algorithm is None:
            gradient_clip_algorithm = trainer_algorithm if trainer_algorithm is not None else "norm"
        elif trainer_algorithm is not None and str(trainer_algorithm).lower() != str(gradient_clip_algorithm).lower():
            raise FlagError(
                f"You have set `Trainer(gradient_clip_algorithm={str(trainer_algorithm).lower()!r})` and have passed "
                f"`clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r})`. Please use only one of them: "
                f"the Trainer's algorithm is what configure_gradient_clipping receives."
            )
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
