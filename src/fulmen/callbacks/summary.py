"""A table of a model's submodules and parameter counts, and a callback that prints it.

``summarize`` only looks at the module (no Trainer), so it can be called on any model. When the
module has an ``example_input_array``, one forward pass with hooks adds each submodule's input and
output sizes and its estimated forward FLOPs (``_forward_example``); that pass leaves the module,
the random number generators and the gradients as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen.runtime.precision import Precision
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

#: The In sizes / Out sizes of a module the example forward did not call (as Lightning shows it).
UNKNOWN_SIZE = "?"


def human_count(n: int) -> str:
    """``999``, ``1.0 K``, ``8.3 K``, ``1.2 M``, ``3.4 B``, ``5.6 T``."""
    if abs(n) < 1000:
        return str(n)
    for scale, unit in ((1e3, "K"), (1e6, "M"), (1e9, "B")):
        # Pick the unit after rounding, so 999_960 reads "1.0 M" rather than "1000.0 K".
        if abs(round(n / scale, 1)) < 1000:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e12:.1f} T"


def _is_lazy(t: torch.Tensor) -> bool:
    return isinstance(t, (UninitializedParameter, UninitializedBuffer))


def _is_sharded(t: torch.Tensor) -> bool:
    """A DTensor (FSDP): its forward gathers from every process (checked without importing it)."""
    return hasattr(t, "device_mesh") and hasattr(t, "placements")


@dataclass(frozen=True)
class SummaryRow:
    """One submodule. ``params`` is ``None`` while the module has lazy (uninitialized) parameters.

    ``in_sizes``, ``out_sizes``, ``flops`` and ``calls`` come from the forward pass on the
    example input (``None`` / ``0`` without one): the sizes of the first call, the FLOPs of all
    calls (the module's own and its children's), and how often the forward called the module.
    """

    name: str
    type: str
    params: int | None
    trainable: str  # "yes", "no", "partly", or "-" for a module without parameters
    in_sizes: str | None = None
    out_sizes: str | None = None
    flops: int | None = None
    calls: int = 0


@dataclass(frozen=True)
class Summary:
    """Rows (one per submodule shown) and totals; ``str()`` renders the table.

    Sizes are in MB of 10**6 bytes: parameters and buffers at their own dtypes, each tensor
    counted once even when shared. ``total_flops`` is ``None`` unless a forward pass on the
    example input ran (``forward_ran``); ``forward_error`` says why it failed or was skipped.
    """

    rows: list[SummaryRow] = field(default_factory=list)
    trainable_params: int = 0
    frozen_params: int = 0
    size_bytes: int = 0
    has_lazy: bool = False
    total_flops: int | None = None
    forward_error: str | None = None

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.frozen_params

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    @property
    def forward_ran(self) -> bool:
        return self.total_flops is not None

    def __str__(self) -> str:
        lines: list[str] = []
        if self.rows:
            columns = list(_COLUMNS)
            if self.forward_ran:
                columns += _FORWARD_COLUMNS
                if any(row.calls != 1 for row in self.rows):
                    columns.append(("Calls", lambda r: str(r.calls)))
            table = [["", *(header for header, _ in columns)]]
            table += [[str(i), *(cell(row) for _, cell in columns)] for i, row in enumerate(self.rows)]
            widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
            text = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table]
            rule = "-" * max(len(t) for t in text)
            lines += [text[0], rule, *text[1:], rule]
        lines += [
            f"{human_count(self.trainable_params):<10}Trainable params",
            f"{human_count(self.frozen_params):<10}Frozen params",
            f"{human_count(self.total_params):<10}Total params",
            f"{self.size_mb:<10.3f}Total size (MB)",
        ]
        if self.total_flops is not None:
            lines.append(f"{human_count(self.total_flops):<10}Total forward FLOPs (estimated)")
        if self.has_lazy:
            lines.append("Some parameters are not initialized yet (lazy modules): shown as ?, not counted.")
        return "\n".join(lines)


# (header, cell) for each column after the row index.
_COLUMNS: tuple[tuple[str, Callable[[SummaryRow], str]], ...] = (
    ("Name", lambda r: r.name),
    ("Type", lambda r: r.type),
    ("Params", lambda r: "?" if r.params is None else human_count(r.params)),
    ("Trainable", lambda r: r.trainable),
)
# Added when the forward pass on the example input ran (and "Calls" when a module shown was
# called other than exactly once).
_FORWARD_COLUMNS: tuple[tuple[str, Callable[[SummaryRow], str]], ...] = (
    ("In sizes", lambda r: r.in_sizes or UNKNOWN_SIZE),
    ("Out sizes", lambda r: r.out_sizes or UNKNOWN_SIZE),
    ("FLOPs", lambda r: human_count(r.flops or 0)),
)


def _row(name: str, module: torch.nn.Module) -> SummaryRow:
    params = list(module.parameters())  # each shared tensor once within this module
    if not params:
        mode = "-"
    else:
        n_trainable = sum(p.requires_grad for p in params)
        mode = "yes" if n_trainable == len(params) else "no" if n_trainable == 0 else "partly"
    count = None if any(_is_lazy(p) for p in params) else sum(p.numel() for p in params)
    return SummaryRow(name, type(module).__name__, count, mode)


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if not _is_lazy(t))


def summarize(module: torch.nn.Module, max_depth: int = 1, *, precision: Precision | None = None) -> Summary:
    """Summarize ``module``: one row per submodule down to ``max_depth`` levels, and totals.

    ``max_depth=1`` lists the direct children, deeper levels get dotted names (``encoder.0``),
    ``0`` gives the totals only and ``-1`` lists every submodule. A submodule reached by two
    paths is listed once; parameters shared between modules are counted once in the totals.

    When ``module.example_input_array`` is set (a tensor: ``forward(x)``; a tuple or list:
    ``forward(*args)``; a dict: ``forward(**kwargs)``), it is moved to the module's device and
    run through ``forward`` once, in eval mode and without gradients, to fill In sizes, Out sizes
    and FLOPs (``torch.utils.flop_counter``: matrix multiplications, convolutions, attention).
    Each module's train/eval mode, the random number generators, parameters and buffers are put
    back afterwards. A forward that raises gives the table without them and a ``FulmenWarning``.
    ``precision`` (the Trainer's) converts the input and wraps the forward in its autocast.
    """
    if max_depth < -1:
        raise ValueError(f"summarize(max_depth={max_depth!r}): expected -1 (all levels), 0 or more.")
    shown = [
        (name, sub)
        for name, sub in module.named_modules()
        if name and (max_depth == -1 or name.count(".") < max_depth)
    ]
    rows = [_row(name, sub) for name, sub in shown]
    params = list(module.parameters())
    ready = [p for p in params if not _is_lazy(p)]
    has_lazy = len(ready) < len(params)
    total_flops, error = None, None
    example = getattr(module, "example_input_array", None)
    if example is not None:
        if has_lazy:  # the forward would initialize them, drawing random numbers: leave that to training
            error = "the module has lazy parameters that are not initialized yet"
        elif any(_is_sharded(p) for p in params):
            error = "its parameters are sharded (FSDP): a forward on one process would wait for the others"
        else:
            try:
                records, total_flops = _forward_example(module, example, [sub for _, sub in shown], precision)
            except Exception as e:
                from fulmen.errors import warn_once

                error = f"{type(e).__name__}: {e}".splitlines()[0]
                warn_once(
                    f"Model summary: {type(module).__name__}.forward(example_input_array) failed ({error}); "
                    f"the summary has no In sizes, Out sizes and FLOPs.",
                    key=f"model-summary-forward-failed-{type(module).__name__}",
                )
            else:
                rows = [
                    SummaryRow(r.name, r.type, r.params, r.trainable, *records[id(sub)])
                    for r, (_, sub) in zip(rows, shown, strict=True)
                ]
    return Summary(
        rows=rows,
        trainable_params=sum(p.numel() for p in ready if p.requires_grad),
        frozen_params=sum(p.numel() for p in ready if not p.requires_grad),
        size_bytes=_nbytes(ready) + _nbytes(module.buffers()),
        has_lazy=has_lazy,
        total_flops=total_flops,
        forward_error=error,
    )


# -- the forward pass on the example input -------------------------------------------------------
def _sizes(x: Any) -> str:
    """``[2, 3]`` for a tensor, ``[[2, 3], [2]]`` for a tuple or list, ``{a: [2, 3]}`` for a dict."""
    if isinstance(x, torch.Tensor):
        return str(list(x.shape))
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_sizes(v) for v in x) + "]"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {_sizes(v)}" for k, v in x.items()) + "}"
    return "None" if x is None else UNKNOWN_SIZE


def _in_sizes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """One positional argument: its sizes; otherwise a list, keyword arguments as ``name=sizes``."""
    if len(args) == 1 and not kwargs:
        return _sizes(args[0])
    return (
        "[" + ", ".join([*(_sizes(a) for a in args), *(f"{k}={_sizes(v)}" for k, v in kwargs.items())]) + "]"
    )


def _device(module: torch.nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def _forward_example(
    module: torch.nn.Module, example: Any, watched: list[torch.nn.Module], precision: Precision | None
) -> tuple[dict[int, tuple[str | None, str | None, int, int]], int]:
    """Run ``module`` on ``example`` with hooks on ``watched``; put everything back afterwards.

    Returns ``({id(submodule): (in_sizes, out_sizes, flops, calls)}, total_flops)``. In sizes and
    Out sizes are those of a module's first call; FLOPs add up over all its calls.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from fulmen.seed import RNGState
    from fulmen.utils.apply import move_to_device

    inputs = move_to_device(example, _device(module))
    if precision is not None:
        inputs = precision.convert_input(inputs)
    counter = FlopCounterMode(display=False)
    sizes: dict[int, tuple[str, str]] = {}
    pending: dict[int, tuple[str, list[int]]] = {}  # in sizes, FLOP totals at each open call's start
    flops = {id(m): 0 for m in watched}
    calls = dict.fromkeys(flops, 0)

    def pre_hook(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        key = id(mod)
        calls[key] += 1
        opened = pending.setdefault(key, (_in_sizes(args, kwargs), []))
        opened[1].append(counter.get_total_flops())

    def post_hook(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        key = id(mod)
        in_sizes, starts = pending[key]
        flops[key] += counter.get_total_flops() - starts.pop()
        sizes.setdefault(key, (in_sizes, _sizes(out)))

    modes = [(m, m.training) for m in module.modules()]
    slots: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (d, dict(d)) for m in module.modules() for d in (m._parameters, m._buffers)
    ]
    buffers = [(b, b.clone()) for b in module.buffers()]
    versions = [(p, p._version) for p in module.parameters()]
    rng = RNGState()
    handles = []
    guard = _parameter_guard(module.parameters())
    try:
        for m in watched:
            handles.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(post_hook, with_kwargs=True))
        module.eval()
        context = precision.forward_context() if precision is not None else contextlib.nullcontext()
        with torch.no_grad(), context, counter, guard:
            if isinstance(inputs, (list, tuple)):
                module(*inputs)
            elif isinstance(inputs, Mapping):
                module(**inputs)
            else:
                module(inputs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        for d, saved in slots:  # tensors the forward replaced (self.buf = ...), added or removed
            d.clear()
            d.update(saved)
        with torch.no_grad():
            for b, copy in buffers:  # running statistics and any other buffer updated in place
                b.copy_(copy)
            guard.restore()
        rng.restore()
    changed = [p for p, v in versions if p._version != v and not guard.saved(p)]
    if changed:  # not expected: an in-place write that torch's operator schema does not declare
        raise RuntimeError(
            f"the forward changed {len(changed)} parameter(s) in place that could not be restored"
        )
    records = {key: (*sizes.get(key, (None, None)), flops[key], calls[key]) for key in flops}
    return records, counter.get_total_flops()


class _ParameterGuard:
    """A dispatch mode that copies a parameter before an operator writes to it (copy on write),
    so ``restore`` can put it back: parameters are not copied unless a forward writes to them."""

    def __init__(self, mode_cls: type, params: Iterable[torch.Tensor]) -> None:
        self._by_storage: dict[int, list[torch.Tensor]] = {}
        for p in params:
            ptr = _storage_ptr(p)
            if ptr:
                self._by_storage.setdefault(ptr, []).append(p)
        self._copies: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._mode = mode_cls(self)

    def __enter__(self) -> None:
        self._mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)

    def before_write(self, t: torch.Tensor) -> None:
        ptr = _storage_ptr(t)
        if ptr in self._by_storage and ptr not in self._copies:
            self._copies[ptr] = [(p, p.detach().clone()) for p in self._by_storage[ptr]]

    def saved(self, p: torch.Tensor) -> bool:
        return _storage_ptr(p) in self._copies

    def restore(self) -> None:
        for pairs in self._copies.values():
            for p, copy in pairs:
                p.copy_(copy)


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):  # tensors without storage (subclasses)
        return 0


def _parameter_guard(params: Iterable[torch.Tensor]) -> _ParameterGuard:
    from torch.utils._python_dispatch import TorchDispatchMode

    class _WriteMode(TorchDispatchMode):
        def __init__(self, guard: _ParameterGuard) -> None:
            super().__init__()
            self.guard = guard

        def __torch_dispatch__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            kwargs = kwargs or {}
            for i, arg in enumerate(func._schema.arguments):
                if arg.alias_info is None or not arg.alias_info.is_write:
                    continue
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, torch.Tensor):
                        self.guard.before_write(t)
            return func(*args, **kwargs)

    return _ParameterGuard(_WriteMode, params)


class ModelSummary(Callback):
    """Print ``summarize(system, max_depth)`` to stdout when fitting starts (rank zero only).

    With ``system.example_input_array`` set, the table has In sizes, Out sizes and FLOPs columns
    (one forward pass under the Trainer's precision; see ``summarize``).
    """

    def __init__(self, max_depth: int = 1) -> None:
        if max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}): expected -1 (all levels), 0 or more.")
        self.max_depth = max_depth

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        if trainer.is_global_zero:
            strategy = getattr(trainer, "strategy", None)
            precision = getattr(strategy, "precision", None)
            print(summarize(system, self.max_depth, precision=precision))
