"""Loading what ``fulmen serve`` serves: a ``.pt2`` program, an ``.onnx`` graph or a checkpoint.

Each becomes a ``ServedModel``: its input specs (from the model card when there is one, else from
the file), a ``run`` function from input arrays to output arrays (the first dimension is the
rows, so the batcher can stack requests and split the answers), and the card ``/metadata``
returns. A checkpoint is served through its system: ``predict_step`` runs on the batch, and the
optional ``serve_preprocess(request_inputs) -> batch`` / ``serve_postprocess(outputs) -> JSON``
methods, when the system defines them, decide what a request means and what the answer is.

Before anything is served the card beside an exported file (``F + ".json"``) must match the
file's sha256 (``ModelCardError`` otherwise): a server never answers with weights nobody exported.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fulmen.serve.codec import TensorSpec
from fulmen.utils.files import file_sha256

_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class ModelCardError(ValueError):
    """The model card is missing or does not match the file: the server does not start."""


class ServeLoadError(ValueError):
    """The model cannot be served as given (unknown format, system not importable, no input spec)."""


@dataclass
class ServedModel:
    """A loaded model, ready for the batcher.

    ``run(arrays) -> (outputs, structure)``: the input arrays (one per spec, rows first) through
    the model; ``outputs`` are arrays with the same rows, ``structure`` rebuilds what the model
    returned (a tensor, a tuple, a dict) for ``serve_postprocess``.
    """

    path: str
    kind: str
    inputs: list[TensorSpec]
    output_names: list[str]
    card: dict[str, Any]
    run: Callable[[list[np.ndarray]], tuple[list[np.ndarray], Any]]
    preprocess: Callable[[Any], list[np.ndarray]] | None = None
    postprocess: Callable[[list[np.ndarray], Any], Any] | None = None
    batchable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def read_checked_card(model_path: str) -> dict[str, Any]:
    """The card beside ``model_path``, after checking it names this file and its sha256.

    ``fulmen.export.check_card`` adds its checks (the source checkpoint's digest, the run's
    audit-chain head)."""
    from fulmen.export.card import card_path, check_card

    path = card_path(model_path)
    if not os.path.isfile(path):
        raise ModelCardError(
            f"no model card beside {model_path} (expected {path}): export with `fulmen export CKPT --to "
            f"{os.path.basename(model_path)}`, which writes it, or pass --no-card to serve an unchecked file"
        )
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
        recorded = card["model"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelCardError(f"model card {path} is not a readable card ({type(err).__name__}: {err})") from None
    actual = file_sha256(model_path)
    if recorded != actual:
        raise ModelCardError(
            f"model card {path} does not match {model_path}: the card records sha256 {str(recorded)[:16]}..., the "
            f"file has {actual[:16]}...; re-export the model (or restore the exported file)"
        )
    problems = check_card(path)
    if problems:
        raise ModelCardError(f"model card {path} does not check: {'; '.join(problems)}")
    return dict(card)


def card_specs(entries: Any) -> list[TensorSpec]:
    return [TensorSpec(str(e["name"]), tuple(e.get("shape") or ()), str(e["dtype"])) for e in entries or []]


def _flatten(out: Any) -> tuple[list[Any], Any]:
    """A model's output as a list of tensors and the structure to rebuild it."""
    if isinstance(out, dict):
        keys = list(out)
        return [out[k] for k in keys], ("dict", keys)
    if isinstance(out, (tuple, list)):
        return list(out), ("tuple", len(out))
    return [out], ("tensor", 1)


def rebuild(arrays: list[np.ndarray], structure: Any) -> Any:
    """``_flatten``'s inverse, with torch tensors: what ``serve_postprocess`` is given."""
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    kind, info = structure
    if kind == "dict":
        return dict(zip(info, tensors))
    if kind == "tuple":
        return tuple(tensors)
    return tensors[0]


def _to_numpy(values: list[Any]) -> list[np.ndarray]:
    return [v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for v in values]


def _output_names(card: dict[str, Any], structure: Any, count: int) -> list[str]:
    names = [str(o["name"]) for o in card.get("outputs") or []]
    if len(names) == count:
        return names
    if structure[0] == "dict":
        return [str(k) for k in structure[1]]
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _torch_dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _pt2_specs(program: Any) -> list[TensorSpec]:
    user = list(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta.get("val")
            shape = tuple(d if isinstance(d, int) else None for d in getattr(val, "shape", ()))
            specs.append(TensorSpec(node.name, shape, _torch_dtype_name(getattr(val, "dtype", "float32"))))
    return specs


def load_pt2(path: str, card: dict[str, Any]) -> ServedModel:
    import torch

    program = torch.export.load(path)
    module = program.module()
    specs = card_specs(card.get("inputs")) or _pt2_specs(program)

    def run(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(a) for a in arrays])
        values, structure = _flatten(out)
        return _to_numpy(values), structure

    return ServedModel(path, "pt2", specs, [], card, run, batchable=_dynamic_rows(specs))


def load_onnx(path: str, card: dict[str, Any]) -> ServedModel:
    try:
        import onnxruntime
    except ImportError:
        raise ServeLoadError("serving .onnx needs onnxruntime: pip install 'fulmen[onnx]'") from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    file_specs = [
        TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape), _ONNX_TYPES.get(i.type, "float32"))
        for i in session.get_inputs()
    ]
    specs = card_specs(card.get("inputs")) or file_specs
    feed_names = [s.name for s in file_specs]
    output_names = [o.name for o in session.get_outputs()]

    def run(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
        outs = session.run(output_names, dict(zip(feed_names, arrays)))
        return [np.asarray(o) for o in outs], ("tuple", len(outs)) if len(outs) > 1 else ("tensor", 1)

    model = ServedModel(path, "onnx", specs, output_names, card, run, batchable=_dynamic_rows(specs))
    return model


def _dynamic_rows(specs: list[TensorSpec]) -> bool:
    return all(s.shape and s.shape[0] is None for s in specs)


def output_names(model: ServedModel, structure: Any, count: int) -> list[str]:
    """The names of ``count`` outputs: the file's (ONNX), the card's, a dict's keys, or ``output_i``."""
    if len(model.output_names) == count:
        return model.output_names
    return _output_names(model.card, structure, count)


def _import_qualified(name: str) -> Any:
    """``package.module.Class`` (run.json's form) or ``package.module:Class`` (the --system form)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if ":" in name:
        module_name, _, qualname = name.partition(":")
        candidates = [(module_name, qualname)]
    else:
        parts = name.split(".")
        candidates = [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]
    for module_name, qualname in candidates:
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise ServeLoadError(f"could not import {name!r}: pass --system package.module:Class (importable from here)")


def _run_dir_of(ckpt_path: str) -> str | None:
    folder = os.path.dirname(os.path.abspath(ckpt_path))
    for _ in range(4):
        if os.path.isfile(os.path.join(folder, "run.json")):
            return folder
        folder = os.path.dirname(folder)
    return None


def _system_class(ckpt_path: str, system: str | None) -> tuple[Any, str | None]:
    from fulmen.system import System

    run_dir = _run_dir_of(ckpt_path)
    if system is None:
        recorded = None
        if run_dir is not None:
            with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
                recorded = json.load(f).get("system")
        if not recorded:
            raise ServeLoadError(f"{ckpt_path}: no run.json names its system; pass --system package.module:Class")
        system = str(recorded)
    cls = _import_qualified(system)
    if not (isinstance(cls, type) and issubclass(cls, System)):
        raise ServeLoadError(f"--system {system!r} is {cls!r}, not a fulmen.System subclass")
    return cls, run_dir


def _example_specs(example: Any) -> list[TensorSpec]:
    items = list(example) if isinstance(example, (tuple, list)) else [example]
    specs = []
    for i, t in enumerate(items):
        if not hasattr(t, "shape") or not hasattr(t, "dtype"):
            return []
        name = "input" if len(items) == 1 else f"input_{i}"
        specs.append(TensorSpec(name, (None, *t.shape[1:]), _torch_dtype_name(t.dtype)))
    return specs


def _ckpt_card(path: str, cls: type, run_dir: str | None, specs: list[TensorSpec]) -> dict[str, Any]:
    """What ``/metadata`` says of a checkpoint served directly (no export, so no written card)."""
    return {
        "format": 1,
        "model": {"file": os.path.basename(path), "format": "ckpt", "sha256": file_sha256(path), "size": os.path.getsize(path)},
        "source": {"checkpoint": os.path.abspath(path), "run_dir": run_dir, "system": f"{cls.__module__}.{cls.__qualname__}"},
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in specs],
    }


def load_ckpt(path: str, system: str | None) -> ServedModel:
    """A checkpoint through its system: ``predict_step`` (and ``serve_preprocess``/``serve_postprocess``)."""
    import torch

    cls, run_dir = _system_class(path, system)
    module = cls.load_from_checkpoint(path)
    pre: Any = getattr(module, "serve_preprocess", None)
    post: Any = getattr(module, "serve_postprocess", None)
    specs = _example_specs(module.example_input_array)
    if not specs and pre is None:
        raise ServeLoadError(
            f"{cls.__name__} has no example_input_array to say what a request holds: set self.example_input_array "
            f"in __init__, or define serve_preprocess(request_inputs) -> batch on the system"
        )

    def run(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
        tensors = [torch.from_numpy(a) for a in arrays]
        batch = tensors[0] if len(tensors) == 1 else tuple(tensors)
        with torch.inference_mode():
            out = module.predict_step(batch, 0)
        values, structure = _flatten(out)
        return _to_numpy(values), structure

    def preprocess(inputs: Any) -> list[np.ndarray]:
        values, _ = _flatten(pre(inputs))
        return _to_numpy(list(values))

    def postprocess(arrays: list[np.ndarray], structure: Any) -> Any:
        return post(rebuild(arrays, structure))

    return ServedModel(
        path, "ckpt", specs, [], _ckpt_card(path, cls, run_dir, specs), run,
        preprocess=preprocess if pre is not None else None,
        postprocess=postprocess if post is not None else None,
    )


def load_model(path: str, *, system: str | None = None, require_card: bool = True) -> ServedModel:
    """Load ``path`` by its suffix: ``.pt2``, ``.onnx``, or a checkpoint (anything else)."""
    if not os.path.isfile(path):
        raise ServeLoadError(f"{path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pt2", ".onnx"):
        card = read_checked_card(path) if require_card else {}
        model = load_pt2(path, card) if suffix == ".pt2" else load_onnx(path, card)
        if not require_card:  # --no-card: /metadata says what the file is, and that nothing was checked
            model.card = {
                "format": 1, "checked": False,
                "model": {"file": os.path.basename(path), "format": model.kind, "sha256": file_sha256(path),
                          "size": os.path.getsize(path)},
                "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in model.inputs],
            }
        return model
    return load_ckpt(path, system)
