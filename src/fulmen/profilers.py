"""Where the time of a run goes: ``Trainer(profiler="simple" | "advanced" | "pytorch")``.

Each profiler times *actions*: every hook that someone overrides (named ``[Callback]Name.hook`` or
``[System]hook``), fetching a batch (``train_dataloader_next``, ``val_dataloader_next``, ...),
moving it to the device (``transfer_batch_to_device``), ``training_step``, ``backward``,
``optimizer_step``, ``optimizer_zero_grad``, ``validation_step``, ``test_step``,
``predict_step``. The loops wrap these once per epoch when a profiler is set, so a run without
one pays nothing. At the end of each stage the report is printed (rank 0) and, when the run has a
folder, written to ``<run folder>/profile-<stage>.txt``.

- ``SimpleProfiler``: wall-clock time per action: calls, mean, total, and share of the stage's time.
- ``AdvancedProfiler``: ``cProfile`` per action: the functions that took the time inside each.
- ``PyTorchProfiler``: ``torch.profiler`` with a schedule (wait, warmup, active steps), writing a
  Chrome / TensorBoard trace into ``<run folder>/profiler/``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from fulmen.errors import FlagError

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler", "resolve_profiler"]


class Profiler:
    """The interface: ``start(action)`` / ``stop(action)``, or ``with profiler.profile(action)``."""

    def __init__(self, filename: str | None = None) -> None:
        self.filename = filename  # report file name stem; default "profile"
        self.stage: str | None = None
        self.log_dir: str | None = None
        self._stage_start = 0.0
        self._stage_time = 0.0

    # -- timing -------------------------------------------------------------------------------
    def start(self, action: str) -> None:
        raise NotImplementedError

    def stop(self, action: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def profile(self, action: str) -> Iterator[None]:
        self.start(action)
        try:
            yield
        finally:
            self.stop(action)

    def wrap(self, action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed as ``action`` on every call."""
        start, stop = self.start, self.stop

        def timed(*args: Any, **kwargs: Any) -> Any:
            start(action)
            try:
                return fn(*args, **kwargs)
            finally:
                stop(action)

        timed.__name__ = getattr(fn, "__name__", action)
        timed.__qualname__ = getattr(fn, "__qualname__", action)
        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def wrap_hook(self, action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A hook function timed as ``action``; callbacks' hooks stay ``functools.partial``
        objects (the loops tell the system's hooks from callbacks' by that)."""
        if isinstance(fn, partial):
            return partial(_call_timed, self, action, fn)
        return self.wrap(action, fn)

    def iterate(self, action: str, iterable: Iterable[Any]) -> Iterator[Any]:
        """The items of ``iterable``; fetching each one is timed as ``action``."""
        it = iter(iterable)
        start, stop = self.start, self.stop
        while True:
            start(action)
            try:
                item = next(it)
            except StopIteration:
                self._discard(action)
                return
            stop(action)
            yield item

    def _discard(self, action: str) -> None:
        self.stop(action)

    # -- a stage -----------------------------------------------------------------------------------
    def setup(self, stage: str, log_dir: str | None = None) -> None:
        self.stage, self.log_dir = stage, log_dir
        self._stage_start = time.perf_counter()

    def summary(self) -> str:
        raise NotImplementedError

    def describe(self, is_global_zero: bool = True) -> str:
        """End of a stage: the report, printed (rank 0) and written into the run folder."""
        self._stage_time = time.perf_counter() - self._stage_start
        text = self.summary()
        if is_global_zero:
            print(text)
            if self.log_dir is not None:
                os.makedirs(self.log_dir, exist_ok=True)
                path = os.path.join(self.log_dir, f"{self.filename or 'profile'}-{self.stage}.txt")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text + "\n")
        return text

    def teardown(self) -> None:
        """After a stage's report (its numbers stay readable until the next stage starts)."""


def _call_timed(profiler: Profiler, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    profiler.start(action)
    try:
        return fn(*args, **kwargs)
    finally:
        profiler.stop(action)


class PassThroughProfiler(Profiler):
    """Records nothing and reports nothing (Lightning's name for the profiler of a run that is not
    profiled; ``Trainer(profiler=None)`` costs less still: nothing is wrapped)."""

    def start(self, action: str) -> None:
        pass

    def stop(self, action: str) -> None:
        pass

    def summary(self) -> str:
        return ""

    def describe(self, is_global_zero: bool = True) -> str:
        return ""


class SimpleProfiler(Profiler):
    """Wall-clock time per action: number of calls, mean, total, and share of the stage's time."""

    def __init__(self, filename: str | None = None) -> None:
        super().__init__(filename)
        self._starts: dict[str, float] = {}
        self.durations: dict[str, list[float]] = defaultdict(list)

    def start(self, action: str) -> None:
        self._starts[action] = time.perf_counter()

    def stop(self, action: str) -> None:
        end = time.perf_counter()
        began = self._starts.pop(action, None)
        if began is not None:
            self.durations[action].append(end - began)

    def _discard(self, action: str) -> None:
        self._starts.pop(action, None)

    @property
    def recorded_durations(self) -> dict[str, list[float]]:
        """Lightning's name for ``durations``: the seconds of each call, per action."""
        return self.durations

    def summary(self) -> str:
        total = self._stage_time or sum(sum(d) for d in self.durations.values()) or 1e-12
        rows = sorted(((a, d) for a, d in self.durations.items() if d), key=lambda r: -sum(r[1]))
        head = ("Action", "Calls", "Mean (ms)", "Total (s)", "Share")
        cells = [
            (a, str(len(d)), f"{1e3 * sum(d) / len(d):.4f}", f"{sum(d):.4f}", f"{100 * sum(d) / total:.1f}%")
            for a, d in rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
        line = "-" * (sum(widths) + 3 * (len(widths) - 1))
        fmt = lambda r: "   ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        out = [f"Profiler report ({self.stage}): {total:.3f} s in all; the share is of that time", line, fmt(head), line]
        out += [fmt(c) for c in cells]
        out.append(line)
        return "\n".join(out)

    def setup(self, stage: str, log_dir: str | None = None) -> None:
        super().setup(stage, log_dir)  # each stage starts afresh; the last stage's data stays readable
        self._starts.clear()
        self.durations = defaultdict(list)


class AdvancedProfiler(Profiler):
    """``cProfile`` for each action: which functions took its time (``line_count`` rows each,
    sorted by cumulative time)."""

    def __init__(self, filename: str | None = None, line_count: int = 20) -> None:
        super().__init__(filename)
        self.line_count = line_count
        self._profiles: dict[str, Any] = {}
        self._active: list[Any] = []  # cProfile allows one active profiler: nested actions pause the outer

    def start(self, action: str) -> None:
        import cProfile

        prof = self._profiles.get(action)
        if prof is None:
            prof = self._profiles[action] = cProfile.Profile()
        if self._active:
            self._active[-1].disable()
        self._active.append(prof)
        prof.enable()

    def stop(self, action: str) -> None:
        if not self._active:
            return
        self._active.pop().disable()
        if self._active:
            self._active[-1].enable()

    def summary(self) -> str:
        import io
        import pstats

        parts = [f"Profiler report ({self.stage}, cProfile per action, {self._stage_time:.3f} s in all)"]
        totals = []
        for action, prof in self._profiles.items():
            stats = pstats.Stats(prof)
            totals.append((getattr(stats, "total_tt", 0.0), action, prof))
        for total, action, prof in sorted(totals, key=lambda t: -t[0]):
            stream = io.StringIO()
            pstats.Stats(prof, stream=stream).strip_dirs().sort_stats("cumulative").print_stats(self.line_count)
            parts.append(f"\n== {action} ({total:.4f} s)\n{stream.getvalue().strip()}")
        return "\n".join(parts)

    def setup(self, stage: str, log_dir: str | None = None) -> None:
        super().setup(stage, log_dir)
        self._profiles.clear()
        self._active.clear()


class PyTorchProfiler(Profiler):
    """``torch.profiler`` over the training steps, with a schedule, writing a trace that Chrome
    (chrome://tracing, Perfetto) and TensorBoard's profiler plugin read.

    Args:
        wait, warmup, active, repeat: ``torch.profiler.schedule`` (steps skipped, warmed up,
            recorded; how many cycles, 0 for as long as the stage runs).
        dirpath: where the traces go (default: ``<run folder>/profiler``).
        **profiler_kwargs: passed to ``torch.profiler.profile`` (``record_shapes``,
            ``profile_memory``, ``with_stack``, ...).
    """

    def __init__(
        self,
        filename: str | None = None,
        dirpath: str | None = None,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        repeat: int = 1,
        row_limit: int = 20,
        **profiler_kwargs: Any,
    ) -> None:
        super().__init__(filename)
        self.dirpath = dirpath
        self.schedule = (wait, warmup, active, repeat)
        self.row_limit = row_limit
        self.kwargs = profiler_kwargs
        self._prof: Any = None
        self._records: dict[str, Any] = {}
        self.trace_dir: str | None = None

    def setup(self, stage: str, log_dir: str | None = None) -> None:
        import torch

        super().setup(stage, log_dir)
        self.trace_dir = self.dirpath or os.path.join(log_dir or os.getcwd(), "profiler")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        wait, warmup, active, repeat = self.schedule
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=repeat),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(self.trace_dir, worker_name=f"{stage}"),
            **self.kwargs,
        )
        self._prof.__enter__()

    def start(self, action: str) -> None:
        import torch

        record = torch.autograd.profiler.record_function(action)
        record.__enter__()
        self._records[action] = record

    def stop(self, action: str) -> None:
        record = self._records.pop(action, None)
        if record is not None:
            record.__exit__(None, None, None)

    def iterate(self, action: str, iterable: Iterable[Any]) -> Iterator[Any]:
        prof = self._prof
        for item in super().iterate(action, iterable):
            yield item
            if prof is not None and action.startswith("train"):
                prof.step()  # one profiler step per training batch

    def summary(self) -> str:
        if self._prof is None:
            return f"Profiler report ({self.stage}): nothing was recorded."
        self._prof.__exit__(None, None, None)
        try:
            table = self._prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.row_limit)
        except Exception as err:  # no step reached the active phase
            table = f"(no events recorded: {err})"
        return f"Profiler report ({self.stage}, torch.profiler; trace in {self.trace_dir})\n{table}"

    def teardown(self) -> None:
        self._prof = None
        self._records.clear()


def resolve_profiler(value: Any) -> Profiler | None:
    """The ``profiler`` flag: None, ``"simple"``, ``"advanced"``, ``"pytorch"`` or a ``Profiler``."""
    if value is None or isinstance(value, Profiler):
        return value
    if isinstance(value, str) and value.lower() in ("simple", "advanced", "pytorch"):
        return {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}[value.lower()]()
    raise FlagError(
        f"Trainer(profiler={value!r}): expected None, 'simple', 'advanced', 'pytorch', or a fulmen.profilers.Profiler "
        f"instance such as SimpleProfiler()."
    )
