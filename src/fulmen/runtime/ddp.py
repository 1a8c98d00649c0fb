"""Data-parallel training on ``torch.distributed``: one process per device, gradients averaged.

``DDPStrategy`` is what ``Trainer(strategy="ddp")`` (and ``devices > 1``) uses. Each process holds
a full copy of the system; PyTorch's ``DistributedDataParallel`` all-reduces the gradients during
backward. The training step is called through the DDP wrapper (so DDP sees the forward pass),
everything else (validation, prediction, checkpoints) uses the system directly.
"""

from __future__ import annotations

import atexit
import datetime
import io
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fulmen.errors import FlagError
from fulmen.runtime.environment import ClusterEnvironment, detect
from fulmen.runtime.precision import Precision
from fulmen.runtime.strategy import Strategy

_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM", "avg": "SUM", "product": "PRODUCT"}


_failed = False


def _attempt_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun the agent's store outlives a restart (``--max-restarts``), and the restarted
    workers would read the previous attempt's addresses ("Gloo connectFullMesh failed ... Connection
    refused"). Each attempt gets its own key prefix; elsewhere torch's env:// rendezvous is used."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"/fulmen/attempt_{attempt}", store)


def _rendezvous_timed_out(strategy: DDPStrategy, backend: str) -> None:
    env = strategy.cluster
    address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    if strategy.global_rank == 0:
        who = f"the other {strategy.world_size - 1} process(es) did not all connect to it"
    else:
        who = f"rank 0 was not reachable at {address}, or other ranks did not join"
    sys.stderr.write(
        f"\n[fulmen] rank {strategy.global_rank}: the {backend} rendezvous at {address} did not complete within "
        f"{strategy.rendezvous_timeout:.0f} s ({strategy.world_size} processes expected, started by {env.kind}): {who}. "
        f"Check that every process was started (one per device on each node), that MASTER_ADDR/MASTER_PORT (or "
        f"torchrun's --rdzv-endpoint) name a host and port all nodes can reach, and that no firewall blocks the port. "
        f"Set FULMEN_RENDEZVOUS_TIMEOUT to wait longer.\n"
    )
    sys.stderr.flush()
    os._exit(1)


def _mark_failed(hook: Any) -> Any:
    def excepthook(*args: Any) -> None:
        global _failed
        _failed = True
        hook(*args)

    return excepthook


def _destroy_process_group() -> None:
    """At a normal exit: wait until every process is done, then take the group down cleanly.
    After an error, exit at once: the closed connections tell the other processes."""
    if dist.is_initialized() and not _failed:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                dist.barrier()
        except Exception:  # another process died: nothing left to wait for
            pass
        dist.destroy_process_group()


class _TrainingStep(nn.Module):
    """What DDP wraps: its forward is the system's ``training_step``."""

    def __init__(self, system: nn.Module) -> None:
        super().__init__()
        self.system = system

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.system.training_step(*args, **kwargs)  # type: ignore[operator]


class DDPStrategy(Strategy):
    """Distributed data parallel: ``Trainer(strategy=DDPStrategy(find_unused_parameters=True))``.

    Args:
        process_group_backend: ``"nccl"`` (default on CUDA) or ``"gloo"`` (default on CPU).
        timeout: how long a collective may wait for the other processes before failing.
        start_method: ``"popen"`` (fulmen runs the script again for each extra process; the
            default) or ``"spawn"`` / ``"fork"`` (``Trainer(strategy="ddp_spawn")``, for notebooks).
        rendezvous_timeout: seconds to wait for all processes to join (default 600, or
            ``FULMEN_RENDEZVOUS_TIMEOUT``); then the process exits with a message saying who is missing.
        **ddp_kwargs: passed to ``torch.nn.parallel.DistributedDataParallel``
            (``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``,
            ``bucket_cap_mb``, ...).
    """

    name = "ddp"

    def __init__(
        self,
        process_group_backend: str | None = None,
        timeout: datetime.timedelta | float = datetime.timedelta(minutes=30),
        start_method: str = "popen",
        rendezvous_timeout: float | None = None,
        **ddp_kwargs: Any,
    ) -> None:
        if start_method not in ("popen", "spawn", "fork"):
            raise FlagError(f"DDPStrategy(start_method={start_method!r}): expected 'popen', 'spawn' or 'fork'.")
        self.process_group_backend = process_group_backend
        self.timeout = timeout if isinstance(timeout, datetime.timedelta) else datetime.timedelta(seconds=timeout)
        self.start_method = start_method
        self.rendezvous_timeout = float(
            rendezvous_timeout if rendezvous_timeout is not None else os.environ.get("FULMEN_RENDEZVOUS_TIMEOUT", 600)
        )
        self.ddp_kwargs = ddp_kwargs
        self.sync_batchnorm = False
        self.cluster: ClusterEnvironment = ClusterEnvironment(kind="none")
        self._device_ids: list[int] = []
        self._devices_per_node = 1
        self.num_nodes = 1
        self._accelerator = "cpu"
        self._wrapped: Any = None
        self._system: nn.Module | None = None
        super().__init__(torch.device("cpu"), Precision())

    # -- configuration (by the Trainer) ---------------------------------------------------------------
    def connect(
        self, accelerator: str, device_ids: list[int], num_nodes: int, precision: Precision, sync_batchnorm: bool
    ) -> None:
        self._accelerator = accelerator
        self._device_ids = device_ids
        self._devices_per_node = len(device_ids)
        self.num_nodes = num_nodes
        self.precision = precision
        self.sync_batchnorm = sync_batchnorm
        self.cluster = detect()
        if self.cluster.managed:
            self._check_environment()
        elif num_nodes > 1:
            raise FlagError(
                f"Trainer(num_nodes={num_nodes}) but this process was not started by torchrun or SLURM, and fulmen "
                f"starts processes on this machine only. Start one launcher per node, e.g. on each node: "
                f"torchrun --nnodes={num_nodes} --nproc-per-node={len(device_ids)} --rdzv-backend=c10d "
                f"--rdzv-endpoint=<first node's host>:29500 train.py; or submit the job with SLURM: "
                f"sbatch --nodes={num_nodes} --ntasks-per-node={len(device_ids)} with `srun python train.py`."
            )
        self._adopt_ranks()

    def _adopt_ranks(self) -> None:
        env = self.cluster
        if env.managed:
            self.world_size, self.global_rank = env.world_size, env.global_rank
            self.local_rank, self.node_rank = env.local_rank, env.node_rank
        else:
            self.world_size = self._devices_per_node * self.num_nodes
            self.global_rank = self.local_rank = self.node_rank = 0
        if self._accelerator == "cuda":
            index = self._device_ids[self.local_rank] if self.local_rank < len(self._device_ids) else self.local_rank
            self.root_device = torch.device("cuda", index)
        else:
            self.root_device = torch.device(self._accelerator)
        from fulmen.runtime.distributed import rank_zero_only

        rank_zero_only.rank = self.global_rank

    def _check_environment(self) -> None:
        env, want = self.cluster, self._devices_per_node * self.num_nodes
        launcher = {"slurm": "SLURM", "torchrun": "torchrun", "fulmen": "fulmen"}[env.kind]
        if env.world_size != want:
            hint = (
                f"submit with --nodes={self.num_nodes} --ntasks-per-node={self._devices_per_node} (one task per device)"
                if env.kind == "slurm"
                else f"start torchrun with --nnodes={self.num_nodes} --nproc-per-node={self._devices_per_node}"
            )
            raise FlagError(
                f"Trainer(devices={self._devices_per_node}, num_nodes={self.num_nodes}) asks for "
                f"{want} processes, but {launcher} started {env.world_size} (world size {env.world_size}, "
                f"{env.local_world_size} per node). Make them agree: {hint}, or set devices/num_nodes to match."
            )

    @property
    def launches_processes(self) -> bool:
        """``ddp_spawn`` / ``ddp_fork`` with several processes and no launcher (torchrun, SLURM) around
        this one: the entry point runs in new processes (``spawn_entry``)."""
        return self.start_method in ("spawn", "fork") and not self.cluster.managed and self.world_size > 1

    # -- processes and the process group ------------------------------------------------------------------
    def setup_environment(self) -> None:
        """Start the other processes (when nobody else did) and join the process group."""
        if dist.is_available() and dist.is_initialized():
            return
        if not self.cluster.managed:
            if self.start_method != "popen":
                raise RuntimeError("ddp_spawn processes are started by Trainer.fit; this is a bug in fulmen.")
            from fulmen.runtime.launch import launch_children

            launch_children(self.world_size, self.num_nodes)
            self.cluster = detect()
            self._adopt_ranks()
        env = self.cluster
        os.environ.setdefault("MASTER_ADDR", env.main_address)
        os.environ.setdefault("MASTER_PORT", str(env.main_port))
        if self.root_device.type == "cuda":
            torch.cuda.set_device(self.root_device)
        backend = self.process_group_backend or ("nccl" if self.root_device.type == "cuda" else "gloo")
        # A rendezvous that cannot complete (a rank that never starts, a wrong address) ends the
        # process with a clear message instead of hanging at "initializing".
        watchdog = threading.Timer(self.rendezvous_timeout, _rendezvous_timed_out, args=(self, backend))
        watchdog.daemon = True
        watchdog.start()
        options: dict[str, Any] = {"device_id": self.root_device} if backend == "nccl" else {}
        try:
            dist.init_process_group(
                backend,
                rank=self.global_rank,
                world_size=self.world_size,
                timeout=self.timeout,
                store=_attempt_store(self.world_size, self.timeout),
                **options,
            )
        finally:
            watchdog.cancel()
        if self.global_rank == 0:
            print(self.describe(backend), file=sys.stderr, flush=True)
        # Left to the interpreter's shutdown, gloo's threads can abort the process ("terminate called
        # without an active exception") after all the work is done.
        atexit.register(_destroy_process_group)
        sys.excepthook = _mark_failed(sys.excepthook)

    def describe(self, backend: str) -> str:
        """The resolved world, printed by rank 0 before training."""
        env = self.cluster
        source = {"fulmen": "fulmen's launcher", "torchrun": "torchrun", "slurm": "SLURM"}.get(env.kind, env.kind)
        per_node = max(1, self.world_size // max(1, self.num_nodes))
        job = f", job {env.job_id}" if env.job_id else ""
        return (
            f"[fulmen] {type(self).__name__}: {self.world_size} processes on {self.num_nodes} node(s), {per_node} per node, "
            f"started by {source}{job}\n"
            f"[fulmen]   backend {backend}, rendezvous {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}, "
            f"devices {self._accelerator} {self._device_ids if self._accelerator == 'cuda' else ''}".rstrip()
        )

    def teardown(self) -> None:
        self._wrapped, self._system = None, None

    # -- the model ----------------------------------------------------------------------------------------
    def setup_module(self, module: nn.Module) -> nn.Module:
        module = super().setup_module(module)
        if self.sync_batchnorm:
            nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return module

    def training_step_function(self, system: nn.Module) -> Callable[..., Any]:
        """``training_step`` called through ``DistributedDataParallel`` (wrapped once per system)."""
        from torch.nn.parallel import DistributedDataParallel

        if self._system is not system or self._wrapped is None:
            if not any(p.requires_grad for p in system.parameters()):
                return cast(Callable[..., Any], system.training_step)
            device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(_TrainingStep(system), device_ids=device_ids, **self.ddp_kwargs)
            self._system = system
        return cast(Callable[..., Any], self._wrapped)

    @property
    def model(self) -> nn.Module | None:
        """The ``DistributedDataParallel`` module during fit (e.g. to ``register_comm_hook``)."""
        return cast("nn.Module | None", self._wrapped)

    def grad_sync_function(self) -> Callable[[bool], None] | None:
        wrapped = self._wrapped

        if wrapped is None:
            return None

        def set_sync(enabled: bool) -> None:
            wrapped.require_backward_grad_sync = enabled

        return set_sync

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # -- collectives -------------------------------------------------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        if dist.is_initialized():
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.root_device.index])
            else:
                dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def reduce(self, tensor: Tensor | float, reduce_op: str = "mean") -> Tensor:
        """``tensor`` reduced over all processes (``"mean"``, ``"sum"``, ``"max"``, ``"min"``)."""
        if not isinstance(tensor, Tensor):
            tensor = torch.tensor(float(tensor), device=self.root_device)
        if not dist.is_initialized():
            return tensor
        op = reduce_op.lower() if isinstance(reduce_op, str) else "sum"
        if op not in _REDUCE_OPS:
            raise ValueError(f"reduce(..., reduce_op={reduce_op!r}): expected one of {', '.join(_REDUCE_OPS)}.")
        out = tensor.detach().clone()
        if out.device != self.root_device:
            out = out.to(self.root_device)
        mean = op in ("mean", "avg")
        if mean and not out.is_floating_point():
            out = out.double()
        dist.all_reduce(out, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]))
        return out / self.world_size if mean else out

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Stack ``tensor`` from every process: shape ``(world_size, *tensor.shape)``."""
        if not dist.is_initialized():
            return tensor.unsqueeze(0)
        t = tensor.detach().contiguous().to(self.root_device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return torch.stack(out)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """True when every process (``all=True``) or any process decided True."""
        if not dist.is_initialized():
            return decision
        flag = torch.tensor(int(bool(decision)), device=self.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        total = int(flag.item())
        return total == self.world_size if all else total > 0


# -- ddp_spawn / ddp_fork: the run in child processes, results back to this one -------------------------
def spawn_entry(trainer: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``trainer.<method>(*args, **kwargs)`` in ``world_size`` new processes (``ddp_spawn``,
    ``ddp_fork``); this process waits, then takes rank 0's results: the return value, the trained
    weights, the loop counters, the metrics and the checkpoint callbacks' states."""
    import torch.multiprocessing as mp

    from fulmen.runtime.launch import free_port

    strategy = trainer.strategy
    context = mp.get_context(strategy.start_method)
    queue = context.SimpleQueue()
    port = free_port()
    mp.start_processes(
        _spawned,
        args=(trainer, method, args, kwargs, port, queue),
        nprocs=strategy.world_size,
        start_method=strategy.start_method,
        join=True,
    )
    # (bytes: tensors put on the queue directly would live in the exited child's shared memory)
    result = torch.load(io.BytesIO(queue.get()), weights_only=False)  # written by this run's own rank 0
    system = trainer.system if args == () or args[0] is None else args[0]
    if system is not None and result["state_dict"] is not None:
        system.load_state_dict(result["state_dict"])
        trainer.system = system
    trainer.loop.load_results(result["global_step"], result["current_epoch"])
    trainer.metrics.load_results(result["callback_metrics"], result["logged_metrics"])
    trainer.state = result["state"]
    for cb, (state, dirpath) in zip(trainer.callbacks, result["callbacks"]):
        if dirpath is not None and getattr(cb, "dirpath", "absent") is None:
            cb.dirpath = dirpath  # (ModelCheckpoint restores its best paths for its own folder only)
        if state is not None:
            cb.load_state_dict(state)
    for lg, version in zip(trainer.loggers, result["logger_versions"]):
        if version is not None:
            lg.pin_version(version)
    return result["out"]


def _spawned(rank: int, trainer: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], port: int, queue: Any) -> None:
    strategy = trainer.strategy
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(strategy.world_size),
            "LOCAL_WORLD_SIZE": str(strategy.world_size),
            "GROUP_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "FULMEN_LAUNCHED": "1",
        }
    )
    strategy.cluster = detect()
    strategy._adopt_ranks()
    # Tensors passed to spawned processes arrive in shared memory: every process would update the
    # same weights. Each process gets its own copy of the modules' tensors.
    for arg in args:
        if isinstance(arg, nn.Module):
            for t in (*arg.parameters(), *arg.buffers()):
                t.data = t.data.clone()
    try:
        out = getattr(trainer, method)(*args, **kwargs)
        if rank == 0:
            system = trainer.system
            buffer = io.BytesIO()
            torch.save(
                {
                    "out": out,
                    "state_dict": {k: v.detach().cpu() for k, v in system.state_dict().items()} if system is not None else None,
                    "global_step": trainer.global_step,
                    "current_epoch": trainer.current_epoch,
                    "callback_metrics": _floats(trainer.callback_metrics),
                    "logged_metrics": _floats(trainer.logged_metrics),
                    "state": trainer.state,
                    "callbacks": [(_state_or_none(cb), getattr(cb, "dirpath", None)) for cb in trainer.callbacks],
                    "logger_versions": [lg.version for lg in trainer.loggers],
                },
                buffer,
            )
            queue.put(buffer.getvalue())
    finally:
        _destroy_process_group()  # multiprocessing children skip atexit


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _state_or_none(callback: Any) -> Any:
    try:
        return callback.state_dict() or None
    except Exception:
        return None
