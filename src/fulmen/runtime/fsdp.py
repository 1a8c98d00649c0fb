"""Fully sharded data parallel: one process per device, each holding a shard of every parameter.

``FSDPStrategy`` is what ``Trainer(strategy="fsdp")`` uses. It is built on PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``): the parameters become ``DTensor`` shards, gathered
layer by layer for the forward and backward passes, and the gradients are reduce-scattered so
each process steps its own shard of the optimizer state. Processes, the process group and the
collectives are those of ``DDPStrategy``.

What is sharded: each submodule the ``auto_wrap_policy`` picks (bottom-up), then the system
itself (the root). ``training_step``, ``validation_step``, ``test_step`` and ``predict_step``
count as forward passes of the root, so parameters that belong to the system directly are
gathered for them too.

Checkpoints (``state_dict_type``):

- ``"full"`` (default): every process takes part in gathering the full tensors, rank 0 writes an
  ordinary fulmen checkpoint (parameters by name, optimizer state in torch's own format, by
  index), loadable by ``torch.load(weights_only=True)``, ``System.load_from_checkpoint`` and a
  run with any number of processes, FSDP or not.
- ``"sharded"``: ``FSDPStrategy.save_checkpoint`` writes a folder with
  ``torch.distributed.checkpoint`` (DCP): ``.metadata`` and one ``__<rank>_0.distcp`` file per
  process with its shards of the weights and the optimizer states, plus ``meta.ckpt``, an
  ordinary fulmen checkpoint (written by rank 0) with everything else and empty weights.
  ``consolidate_checkpoint`` turns such a folder into a ``"full"`` checkpoint file in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch import nn

from fulmen.errors import FlagError
from fulmen.runtime.ddp import DDPStrategy

if TYPE_CHECKING:
    from concurrent.futures import Future

    from torch.distributed.fsdp import MixedPrecisionPolicy

#: The file in a sharded checkpoint folder that holds everything but the weights and optimizer states.
META_FILE = "meta.ckpt"
#: Marks the optimizer states of a sharded checkpoint (they are read from the folder on load).
_SHARDED_KEY = "fulmen_sharded_folder"

#: The step methods that run as forward passes of the root module.
_STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")

WrapPolicy = Callable[[nn.Module], bool]


def _wrap_policy(policy: Any) -> WrapPolicy | None:
    """``auto_wrap_policy`` as a predicate over modules (None: shard the root only)."""
    if policy is None:
        return None
    if isinstance(policy, type) and issubclass(policy, nn.Module):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        if not classes or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
            raise FlagError(
                f"FSDPStrategy(auto_wrap_policy={policy!r}): expected a set of nn.Module classes, e.g. "
                f"{{nn.TransformerEncoderLayer}}, or a function(module) -> bool."
            )
        return lambda module: isinstance(module, classes)
    if callable(policy):
        return cast(WrapPolicy, policy)
    raise FlagError(
        f"FSDPStrategy(auto_wrap_policy={policy!r}): expected a set of nn.Module classes, e.g. "
        f"{{nn.TransformerEncoderLayer}}, or a function(module) -> bool."
    )


def _mixed_precision(value: Any) -> MixedPrecisionPolicy | None:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if value is None or isinstance(value, MixedPrecisionPolicy):
        return value
    if isinstance(value, torch.dtype):
        # compute in ``value``, reduce gradients in float32 (the sharded weights stay float32)
        return MixedPrecisionPolicy(param_dtype=value, reduce_dtype=torch.float32)
    if isinstance(value, Mapping):
        try:
            return MixedPrecisionPolicy(**value)
        except TypeError as err:
            raise FlagError(f"FSDPStrategy(mixed_precision={value!r}): {err}.") from err
    raise FlagError(
        f"FSDPStrategy(mixed_precision={value!r}): expected a torch.distributed.fsdp.MixedPrecisionPolicy, a dtype "
        f"such as torch.bfloat16, or a dict of MixedPrecisionPolicy's arguments."
    )


def _fqn_order(param_groups: Iterable[Mapping[str, Any]]) -> list[str]:
    return [name for group in param_groups for name in group["params"]]


def optimizer_state_by_index(state: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter names (DCP's ``get_optimizer_state_dict``) in torch's
    own format (``Optimizer.state_dict()``: parameters numbered in the order of the groups)."""
    if not state:
        return {}
    index = {name: i for i, name in enumerate(_fqn_order(state["param_groups"]))}
    groups, start = [], 0
    for group in state["param_groups"]:
        n = len(group["params"])
        groups.append({**group, "params": list(range(start, start + n))})
        start += n
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


class FSDPStrategy(DDPStrategy):
    """Fully sharded data parallel (FSDP2): ``Trainer(strategy=FSDPStrategy(auto_wrap_policy={Block}))``.

    Args:
        auto_wrap_policy: which submodules become their own FSDP unit (gathered and freed on their
            own; the larger the units, the more memory a forward needs): a set of module classes,
            e.g. ``{nn.TransformerEncoderLayer}``, or a function ``module -> bool``. ``None``: the
            whole system is one unit.
        mixed_precision: a ``torch.distributed.fsdp.MixedPrecisionPolicy`` (or a dtype: compute
            in it, reduce gradients in float32; or a dict of the policy's arguments). The
            Trainer's ``precision="bf16-mixed"`` works too (autocast around the steps, as without
            FSDP); both together are allowed.
        cpu_offload: keep the sharded parameters, gradients and optimizer states in CPU memory
            (``CPUOffloadPolicy``); the optimizer steps on the CPU.
        reshard_after_forward: free the gathered parameters after each unit's forward (``True``,
            the least memory) or keep them until the backward (``False``: fewer all-gathers).
            An int reshards to groups of that many processes (see ``fully_shard``).
        state_dict_type: ``"full"`` or ``"sharded"`` checkpoints (see the module's docstring).
        process_group_backend, timeout, start_method: as for ``DDPStrategy`` (``"popen"`` only).
        **fsdp_kwargs: passed on to every ``fully_shard`` call (e.g. ``shard_placement_fn``).
    """

    name = "fsdp"

    def __init__(
        self,
        auto_wrap_policy: Any = None,
        mixed_precision: Any = None,
        cpu_offload: bool = False,
        reshard_after_forward: bool | int = True,
        state_dict_type: str = "full",
        process_group_backend: str | None = None,
        timeout: datetime.timedelta | float = datetime.timedelta(minutes=30),
        start_method: str = "popen",
        **fsdp_kwargs: Any,
    ) -> None:
        if start_method != "popen":
            raise FlagError(
                f"FSDPStrategy(start_method={start_method!r}): FSDP runs from a script only (start_method='popen', "
                f"the default), started by fulmen, torchrun or SLURM."
            )
        if state_dict_type not in ("full", "sharded"):
            raise FlagError(f"FSDPStrategy(state_dict_type={state_dict_type!r}): expected 'full' or 'sharded'.")
        if not isinstance(cpu_offload, bool):
            raise FlagError(f"FSDPStrategy(cpu_offload={cpu_offload!r}): expected True or False.")
        if not isinstance(reshard_after_forward, (bool, int)) or (
            not isinstance(reshard_after_forward, bool) and reshard_after_forward < 1
        ):
            raise FlagError(
                f"FSDPStrategy(reshard_after_forward={reshard_after_forward!r}): expected True, False or a positive int."
            )
        super().__init__(process_group_backend=process_group_backend, timeout=timeout, start_method=start_method)
        self.auto_wrap_policy = _wrap_policy(auto_wrap_policy)
        self.mixed_precision = _mixed_precision(mixed_precision)
        self.cpu_offload = cpu_offload
        self.reshard_after_forward = reshard_after_forward
        self.state_dict_type = state_dict_type
        self.fsdp_kwargs = fsdp_kwargs
        # sharded saves: the future of the one in flight (asynchronous), their process group, and
        # what names their temporary folders
        self._dcp_future: Future[Any] | None = None
        self._ckpt_group: Any = None
        self._save_token: str | None = None
        self._save_count = 0

    def connect(
        self, accelerator: str, device_ids: list[int], num_nodes: int, precision: Any, sync_batchnorm: bool
    ) -> None:
        if precision.name == "16-mixed":
            # GradScaler's unscale and inf checks see each process's gradient shard only: measured on
            # CPU/gloo, a 16-mixed FSDP run ended 0.36 away from the float32 run (bf16-mixed: 0.004).
            raise FlagError(
                "Trainer(strategy='fsdp', precision='16-mixed'): loss scaling is not supported with sharded gradients. "
                "Use precision='bf16-mixed', or FSDPStrategy(mixed_precision=torch.bfloat16)."
            )
        super().connect(accelerator, device_ids, num_nodes, precision, sync_batchnorm)

    # -- the model ----------------------------------------------------------------------------------------
    def _shard_kwargs(self) -> dict[str, Any]:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy

        kwargs: dict[str, Any] = {
            "mesh": init_device_mesh(self.root_device.type, (self.world_size,)),
            "reshard_after_forward": self.reshard_after_forward,
            **self.fsdp_kwargs,
        }
        if self.mixed_precision is not None:
            kwargs["mp_policy"] = self.mixed_precision
        if self.cpu_offload:
            # pinned memory needs an accelerator ("Cannot access accelerator device when none is available")
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=self.root_device.type == "cuda")
        return kwargs

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Shard ``module``: the submodules ``auto_wrap_policy`` picks, bottom-up, then the root.
        A module sharded already (a second ``fit``, or ``test`` after ``fit``) is left as it is."""
        from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

        if isinstance(module, FSDPModule):
            self._system = module
            return module
        if not dist.is_initialized():
            raise RuntimeError("FSDPStrategy.setup_module needs the process group: call setup_environment first.")
        module = super().setup_module(module)  # precision's dtype, the device, SyncBatchNorm
        kwargs = self._shard_kwargs()
        if self.auto_wrap_policy is not None:
            # named_modules lists parents before children: reversed, every child is sharded first
            for _, sub in reversed(list(module.named_modules())):
                if sub is not module and not isinstance(sub, FSDPModule) and self.auto_wrap_policy(sub):
                    fully_shard(sub, **kwargs)
        fully_shard(module, **kwargs)
        from fulmen.system import System

        for name in _STEP_METHODS:
            if isinstance(module, System) and getattr(type(module), name, None) is getattr(System, name, None):
                continue  # not defined: left as it is, so the loops still see it as missing
            if hasattr(module, name):
                register_fsdp_forward_method(module, name)
        self._system = module
        return module

    def training_step_function(self, system: nn.Module) -> Callable[..., Any]:
        """The system's own ``training_step`` (registered as a forward of the root unit)."""
        self._system = system
        return cast(Callable[..., Any], system.training_step)

    @property
    def model(self) -> nn.Module | None:
        """The sharded system (an ``FSDPModule``) once it is set up."""
        return self._system

    def grad_sync_function(self) -> Callable[[bool], None] | None:
        from torch.distributed.fsdp import FSDPModule

        system = self._system
        if not isinstance(system, FSDPModule):
            return None
        fsdp = system

        def set_sync(enabled: bool) -> None:
            fsdp.set_requires_gradient_sync(enabled)

        return set_sync

    def teardown(self) -> None:
        # The system stays sharded after the run (its parameters are DTensors): keep it, so that
        # checkpoints and a later run find it.
        pass

    # -- checkpoint state ---------------------------------------------------------------------------------
    def _options(self, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(**kwargs)

    def _sharded(self, system: nn.Module) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return isinstance(system, FSDPModule) and dist.is_initialized()

    def model_state_dict(self, system: nn.Module) -> dict[str, Any]:
        """``"full"``: the full tensors on the CPU of rank 0 (an empty dict on the other ranks;
        every rank must call this). ``"sharded"``: this rank's shards (DTensors)."""
        if not self._sharded(system):
            return system.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        if self.state_dict_type == "sharded":
            return get_model_state_dict(system)
        return get_model_state_dict(system, options=self._options(full_state_dict=True, cpu_offload=True))

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``"full"``: torch's own format (by index) with full tensors on rank 0 (empty elsewhere);
        ``"sharded"``: keyed by parameter name, this rank's shards."""
        system = self._system
        if system is None or not self._sharded(system):
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if self.state_dict_type == "sharded":
            return get_optimizer_state_dict(system, optimizer)
        full = get_optimizer_state_dict(system, optimizer, options=self._options(full_state_dict=True, cpu_offload=True))
        return optimizer_state_by_index(full)

    def load_model_state_dict(self, system: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
        """Full tensors (every rank holds the checkpoint) are cut into this rank's shards;
        DTensors (a sharded checkpoint) are loaded as they are."""
        if not self._sharded(system):
            system.load_state_dict(state, strict=strict)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        from torch.distributed.tensor import DTensor

        full = not any(isinstance(v, DTensor) for v in state.values())
        set_model_state_dict(system, state, options=self._options(full_state_dict=full, strict=strict))

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        system = self._system
        if system is None or not self._sharded(system):
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        if _SHARDED_KEY in state:  # a sharded checkpoint: read this rank's shards from the folder
            import torch.distributed.checkpoint as dcp

            target = get_optimizer_state_dict(system, optimizer)  # allocates the state to read into
            dcp.load({"optimizer_states": {str(state["index"]): target}}, checkpoint_id=state[_SHARDED_KEY])
            set_optimizer_state_dict(system, optimizer, target)
            return
        # torch's format (by index) with full tensors: the index is the parameter's place in the groups
        names = {id(p): name for name, p in system.named_parameters()}
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        saved_count = sum(len(g["params"]) for g in state["param_groups"])
        if saved_count != len(order):
            raise ValueError(f"the checkpoint's optimizer holds {saved_count} parameters, this one {len(order)}")
        by_name: dict[str, Any] = {
            "state": {order[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [
                {**group, "params": [order[int(i)] for i in group["params"]]} for group in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(system, optimizer, by_name, options=self._options(full_state_dict=True))

    # -- checkpoint files ---------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        ckpt: dict[str, Any],
        filepath: str | os.PathLike[str],
        *,
        audit_dir: str | os.PathLike[str] | None = None,
        metrics: Mapping[str, Any] | None = None,
        position: Any = None,
    ) -> None:
        """Write ``ckpt`` (from ``build_checkpoint``; call on every rank). ``"full"``: rank 0
        writes the file. ``"sharded"``: every rank writes its shards into a folder (DCP), rank 0
        adds ``meta.ckpt`` with the rest and a manifest of the shard files (SHA-256, size); the
        folder is written under a temporary name and renamed to ``filepath`` once complete, then
        its audit-log line is appended. With ``AsyncCheckpointIO`` the shards are copied to host
        memory here and written in the background (``torch.distributed.checkpoint.async_save``
        on a process group of its own); the rest runs in the IO's writer thread (``then``)."""
        path = os.fspath(filepath)
        if self.state_dict_type == "full":
            super().save_checkpoint(ckpt, path, audit_dir=audit_dir, metrics=metrics, position=position)
            return
        import torch.distributed.checkpoint as dcp

        distributed = dist.is_available() and dist.is_initialized()
        final = os.path.abspath(path)
        tmp = self._temporary_folder(final, distributed)
        optimizers = ckpt.get("optimizer_states")
        shards: dict[str, Any] = {"state_dict": ckpt["state_dict"]}
        if optimizers is not None:
            shards["optimizer_states"] = {str(i): s for i, s in enumerate(optimizers)}
        meta: dict[str, Any] | None = None
        if self.is_global_zero:
            meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}
            meta["state_dict"] = {}
            meta["state_dict_type"] = "sharded"
            if optimizers is not None:  # the settings, for the checks on resume (the states are in the shards)
                meta["optimizer_param_groups"] = [s["param_groups"] for s in optimizers]
            meta = _host_copy(meta)  # (training goes on changing what it refers to)
        metrics = dict(metrics) if metrics is not None else None
        io = self.checkpoint_io

        def finish() -> None:
            if meta is not None:
                _finish_sharded_folder(meta, tmp, final, audit_dir=audit_dir, metrics=metrics)

        if io.asynchronous:
            previous = self._dcp_future
            if previous is not None:  # one save in flight at a time (its staged copy is freed first)
                import concurrent.futures

                concurrent.futures.wait([previous])
            group = self._checkpoint_group() if distributed else None
            future = cast(
                "Future[Any]", dcp.async_save(shards, checkpoint_id=tmp, process_group=group, no_dist=not distributed)
            )
            self._dcp_future = future

            def done() -> None:
                future.result()  # (raises the write's error in the writer thread, hence at check/finish)
                finish()

            io.then(done)
            return
        dcp.save(shards, checkpoint_id=tmp, no_dist=not distributed)
        io.then(finish)
        if distributed:
            self.barrier("save_checkpoint")  # the folder is in place before anybody goes on

    def _checkpoint_group(self) -> Any:
        """The gloo process group of asynchronous sharded saves (created once, by every rank), so
        that their collectives, run in a background thread, never interleave with training's."""
        if self._ckpt_group is None:
            self._ckpt_group = dist.new_group(backend="gloo")
        return self._ckpt_group

    def _temporary_folder(self, final: str, distributed: bool) -> str:
        """The hidden sibling folder a sharded save writes into: the same name on every rank,
        never one a previous (killed) process used. Rank 0 removes those left over by one."""
        if self._save_token is None:
            import secrets

            token = [secrets.token_hex(4)]
            if distributed:
                dist.broadcast_object_list(token, src=0)
            self._save_token = str(token[0])
        self._save_count += 1
        parent, name = os.path.split(final)
        tmp = os.path.join(parent, f".{name}.tmp-{self._save_token}-{self._save_count}")
        if self.is_global_zero:
            os.makedirs(parent, exist_ok=True)
            _remove_leftovers(parent, name, self._save_token)
        return tmp

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
        """Read a checkpoint on every rank: a file as ``fulmen.checkpoint.io.load_checkpoint`` does; a
        sharded folder into this rank's shards (the system must be set up, i.e. sharded)."""
        from fulmen.checkpoint.io import load_checkpoint

        path = os.fspath(path)
        if not os.path.isdir(path):
            return load_checkpoint(path, map_location=map_location)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        system = self._system
        if system is None or not self._sharded(system):
            raise RuntimeError(
                f"{path!r} is a sharded checkpoint folder: it loads into a system sharded by FSDPStrategy during a "
                f"run. Turn it into one file with fulmen.runtime.fsdp.consolidate_checkpoint({path!r}, 'out.ckpt')."
            )
        ckpt = load_checkpoint(os.path.join(path, META_FILE), map_location=map_location)
        ckpt.pop(MANIFEST_KEY, None)
        state = {k: torch.empty_like(cast(torch.Tensor, v)) for k, v in get_model_state_dict(system).items()}
        dcp.load({"state_dict": state}, checkpoint_id=path)
        ckpt["state_dict"] = state
        groups = ckpt.pop("optimizer_param_groups", None)
        if groups is not None:
            ckpt["optimizer_states"] = [
                {"state": {}, "param_groups": g, _SHARDED_KEY: path, "index": i} for i, g in enumerate(groups)
            ]
        return ckpt


def consolidate_checkpoint(folder: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Turn a sharded checkpoint folder into one ordinary fulmen checkpoint file (full tensors,
    optimizer states in torch's format), in one process without a process group; returns it."""
    from fulmen.checkpoint.io import write_checkpoint

    ckpt = read_sharded_folder(folder)
    for key in ("digest", "audit"):
        ckpt.pop(key, None)
    write_checkpoint(ckpt, out)
    return ckpt


# -- sharded checkpoint folders ------------------------------------------------------------------------------
#: The key of ``meta.ckpt`` that lists the folder's other files: ``{name: {"sha256": hex, "size": bytes}}``.
MANIFEST_KEY = "shard_files"


def _host_copy(obj: Any) -> Any:
    """``obj`` with its tensors copied to the CPU (containers rebuilt, everything else shared)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_host_copy(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_host_copy(v) for v in obj)
    return obj


def _remove_leftovers(parent: str, name: str, token: str) -> None:
    """Temporary folders of ``name`` that a killed process left behind (not this process's)."""
    import shutil

    prefix, own = f".{name}.tmp-", f".{name}.tmp-{token}-"
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        if n.startswith(prefix) and not n.startswith(own):
            shutil.rmtree(os.path.join(parent, n), ignore_errors=True)


def shard_manifest(folder: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The files of a sharded folder other than ``meta.ckpt``: their SHA-256 and size."""
    from fulmen.utils.files import file_sha256

    folder = os.fspath(folder)
    out: dict[str, dict[str, Any]] = {}
    for n in sorted(os.listdir(folder)):
        p = os.path.join(folder, n)
        if n != META_FILE and os.path.isfile(p):
            out[n] = {"sha256": file_sha256(p), "size": os.path.getsize(p)}
    return out


def check_shards(
    folder: str | os.PathLike[str], meta: Mapping[str, Any], *, hashes: bool = True
) -> list[tuple[str, str, str]]:
    """What is wrong with the shard files of ``folder`` against ``meta``'s manifest, as
    ``(file name, kind, message)``: ``"missing"``, ``"truncated"``, ``"modified"`` (another size,
    or with ``hashes`` another SHA-256) or ``"unknown_file"`` (a file the manifest does not list).
    Empty: intact (or no manifest: a folder an older fulmen wrote)."""
    from fulmen.utils.files import file_sha256

    manifest = meta.get(MANIFEST_KEY)
    if not isinstance(manifest, Mapping):
        return []
    folder = os.fspath(folder)
    wrong: list[tuple[str, str, str]] = []
    for name, rec in sorted(manifest.items()):
        p = os.path.join(folder, name)
        size, expected = (os.path.getsize(p) if os.path.isfile(p) else None), rec.get("size")
        if size is None:
            wrong.append((name, "missing", f"the manifest in {META_FILE} lists it ({expected} bytes); it is gone"))
        elif isinstance(expected, int) and size < expected:
            wrong.append((name, "truncated", f"{size} bytes on disk, {expected} when written"))
        elif size != expected:
            wrong.append((name, "modified", f"{size} bytes on disk, {expected} when written"))
        elif hashes and (actual := file_sha256(p)) != rec.get("sha256"):
            wrong.append((name, "modified", f"its SHA-256 is {actual}, {rec.get('sha256')} when written"))
    for n in sorted(set(os.listdir(folder)) - set(manifest) - {META_FILE}):
        wrong.append((n, "unknown_file", f"the manifest in {META_FILE} does not list it: added after the folder was written"))
    return wrong


def _finish_sharded_folder(
    meta: dict[str, Any],
    tmp: str,
    final: str,
    *,
    audit_dir: str | os.PathLike[str] | None,
    metrics: Mapping[str, Any] | None,
) -> None:
    """Rank 0, once every rank's shards are in ``tmp``: ``meta.ckpt`` with the manifest and its
    content digest (and audit record naming ``final``), the folder renamed to ``final`` and its
    parent fsynced, then the audit-log line."""
    from fulmen.checkpoint.io import write_checkpoint
    from fulmen.utils.files import fsync_dir

    meta[MANIFEST_KEY] = shard_manifest(tmp)

    def place() -> None:
        fsync_dir(tmp)  # (DCP fsyncs the shard files; the folder's entries too)
        _place_folder(tmp, final)

    try:
        write_checkpoint(
            meta,
            os.path.join(tmp, META_FILE),
            audit_dir=audit_dir,
            metrics=metrics,
            logged_as=os.path.join(final, META_FILE),
            placed=place,
        )
    except BaseException:  # (a full disk): the folder never appears; the previous one stays
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(a: str, b: str) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0)


def _place_folder(tmp: str, final: str) -> None:
    """Rename the complete folder ``tmp`` to ``final``, replacing what is there (a folder, file or
    link): swapped atomically where the system can, else moved aside first; then fsync."""
    import shutil

    from fulmen.utils.files import fsync_dir

    parent = os.path.dirname(final)
    if not os.path.lexists(final):
        os.rename(tmp, final)
        fsync_dir(parent)
        return
    if _exchange(tmp, final):
        old = tmp  # now holds what was at ``final``
    else:
        old = f"{tmp}.old"
        os.rename(final, old)
        os.rename(tmp, final)
    fsync_dir(parent)
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(old)


def is_sharded_folder(path: str | os.PathLike[str]) -> bool:
    """A folder written by a sharded save (it holds ``meta.ckpt``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def read_sharded_folder(folder: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """A sharded checkpoint folder as one ordinary checkpoint in this process, no process group
    needed: ``meta.ckpt`` (digest checked) with the full weights and the optimizer states in
    torch's own format (by index), read with DCP. Any number of processes may have written it."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    from fulmen.checkpoint.io import load_checkpoint

    folder = os.fspath(folder)
    ckpt = load_checkpoint(os.path.join(folder, META_FILE), map_location=map_location)
    shards: dict[str, Any] = {}
    reader = FileSystemReader(folder)
    _load_state_dict(shards, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    ckpt["state_dict"] = shards["state_dict"]
    ckpt.pop("state_dict_type", None)
    ckpt.pop(MANIFEST_KEY, None)
    groups = ckpt.pop("optimizer_param_groups", None)
    if groups is not None:
        saved = shards.get("optimizer_states", {})
        ckpt["optimizer_states"] = [
            optimizer_state_by_index({"state": saved.get(str(i), {}).get("state", {}), "param_groups": g})
            for i, g in enumerate(groups)
        ]
    return ckpt
