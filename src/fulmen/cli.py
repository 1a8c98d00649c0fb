"""The ``fulmen`` command (see ``docs/cli.md``): a dispatcher; each command lives with its feature.

- ``fulmen verify | keygen | sign | export``: ``fulmen.checkpoint.commands``;
- ``fulmen doctor package.module:System [--data package.module:DataModule]``: builds the system
  (and datamodule) with no arguments, runs ``fulmen.doctor`` and prints its report (exit 1 when it
  has problems);
- ``fulmen report RUN [RUN ...]``: ``fulmen.report``; ``fulmen reproduce RUN_DIR``: ``fulmen.reproduce``;
- ``fulmen fit|validate|test|predict`` build a system, an optional datamodule and a Trainer from
  YAML files and ``--model.*`` / ``--data.*`` / ``--trainer.*`` flags (with jsonargparse, imported
  only for these commands), run that stage, and save the effective configuration as
  ``config.yaml`` in the run folder. ``run_cli(argv)`` does the same from Python and returns what it
  built.

Usage errors exit 2. New subcommands: add a parser in ``_parser`` (or a module's ``add_parsers``)
and a handler in ``_HANDLERS``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fulmen.errors import MisconfigurationError

#: The stages run from a configuration (``fulmen fit --config config.yaml``).
STAGES = ("fit", "validate", "test", "predict")
#: The top-level keys of a configuration.
CONFIG_KEYS = ("seed_everything", "ckpt_path", "trainer", "model", "data")
CONFIG_FILE = "config.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fulmen", description="fulmen command-line tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from fulmen.checkpoint import commands

    commands.add_parsers(sub)  # verify, keygen, sign, export

    doctor = sub.add_parser(
        "doctor",
        help="run one batch of each stage of a system and report what would go wrong",
        description="Import SYSTEM (package.module:Class), build it with no arguments, run one training and one "
        "validation batch through it (nothing is written, no optimizer steps) and print what would go wrong. "
        "Exit status 1 when there are problems, 0 otherwise (warnings allowed).",
    )
    doctor.add_argument("system", metavar="SYSTEM", help="the fulmen.System class, as package.module:Class")
    doctor.add_argument(
        "--data", metavar="DATAMODULE", help="a fulmen.DataModule class, as package.module:Class (default: the system's data)"
    )
    from fulmen import report

    report.add_arguments(
        sub.add_parser(
            "report",
            help="write an HTML report (curves, confusion matrix, highest losses) of one run or several",
            description="Render RUN_DIR's metrics.csv (and epoch_times.csv, predictions.pt when present) into a "
            "self-contained index.html with PNG plots; several runs are overlaid.",
        )
    )
    from fulmen.reproduce import run as reproduce_run

    reproduce_run.add_arguments(
        sub.add_parser(
            "reproduce",
            help="re-run a recorded run in a fresh folder and compare its checkpoints bit for bit",
            description="Rebuild RUN_DIR's run from its record (run.json, the code snapshot, the seed, flags and "
            "determinism settings) in a new folder, run it, and compare each checkpoint with the original's audit log. "
            "Exit status 0 when every compared checkpoint is the same, 1 when one differs or the re-run fails, 2 when "
            "the run cannot be reproduced here. Nothing in RUN_DIR is written.",
        )
    )
    from fulmen import serve

    serve.add_arguments(
        sub.add_parser(
            "serve",
            help="serve an exported model (.pt2, .onnx) or a checkpoint over HTTP, batching concurrent requests",
            description="Start an HTTP server (FastAPI + uvicorn) for MODEL: POST /predict, GET /health, GET /metadata "
            "(the model card). An exported file's card must match it, or the server refuses to start (exit status 1).",
        )
    )
    from fulmen.audit import cli as audit_cli

    audit_cli.add_arguments(
        sub.add_parser(
            "audit",
            help="audit a trained system for bias: per-group metrics and disparities into audit.json",
            description="Load RUN_DIR's best (else last) checkpoint (or CKPT), run it over the DataModule's test data, compute "
            "per-group metrics, bootstrap intervals and disparities with fairlearn, and write audit.json into the run "
            "folder. Exit status 0 when written, 2 for input it cannot use.",
        )
    )
    # Listed for `fulmen --help` only: main() hands these to their own (jsonargparse) parser.
    for stage in STAGES:
        sub.add_parser(
            stage,
            add_help=False,
            help=f"{_STAGE_HELP[stage]} from YAML config files and --model/--data/--trainer flags "
            f"(`fulmen {stage} --help` lists them)",
        )
    return parser


_STAGE_HELP = {
    "fit": "train a system",
    "validate": "run the validation loop once",
    "test": "run the test loop once",
    "predict": "run predict_step over the predict data",
}


def _checkpoint_command(name: str) -> Callable[[argparse.Namespace], int]:
    """The handler of a checkpoint command, imported when it runs (``fulmen.checkpoint.commands``)."""

    def run(args: argparse.Namespace) -> int:
        from fulmen.checkpoint import commands

        handler: Callable[[argparse.Namespace], int] = getattr(commands, name)
        return handler(args)

    return run


def _load_class(spec: str, what: str) -> Any:
    """``package.module:Class`` (or ``package.module:Outer.Inner``), imported from the current folder too."""
    import importlib

    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"{what} {spec!r}: expected package.module:Class")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {module_name} has no {qualname}")
        obj = getattr(obj, part)
    return obj


def _doctor(args: argparse.Namespace) -> int:
    from fulmen.datamodule import DataModule
    from fulmen.doctor import doctor
    from fulmen.system import System

    try:
        system_cls = _load_class(args.system, "SYSTEM")
        data_cls = _load_class(args.data, "--data") if args.data else None
    except (ImportError, ValueError) as err:
        print(f"fulmen doctor: {err}", file=sys.stderr)
        return 2
    for cls, base, what in ((system_cls, System, "SYSTEM"), (data_cls, DataModule, "--data")):
        if cls is not None and not (isinstance(cls, type) and issubclass(cls, base)):
            print(f"fulmen doctor: {what} {cls!r} is not a fulmen.{base.__name__} subclass", file=sys.stderr)
            return 2
    try:
        system = system_cls()
        datamodule = data_cls() if data_cls is not None else None
    except Exception as err:
        print(
            f"fulmen doctor: could not build it with no arguments: {type(err).__name__}: {err}. Give the class "
            f"defaults for every argument, or a small subclass that passes them.",
            file=sys.stderr,
        )
        return 2
    report = doctor(system, datamodule, verbose=False)
    print(report)
    return 1 if report.problems else 0


# -- fulmen fit|validate|test|predict --config config.yaml -------------------------------------------
class ConfigError(MisconfigurationError, ValueError):
    """A configuration the ``fulmen fit|validate|test|predict`` commands cannot use (bad key, value,
    class path); the message says what to change."""


@dataclass
class CLIRun:
    """What ``run_cli`` built and ran."""

    stage: str
    trainer: Any
    system: Any
    datamodule: Any
    #: The effective configuration as plain data (what ``config.yaml`` holds); ``seed_everything``
    #: is the seed used (``true`` replaced by the random seed drawn).
    config: dict[str, Any]
    #: What the Trainer's method returned (metrics for validate/test, predictions for predict).
    result: Any = None
    #: Where the configuration was saved (None if the stage did not start, or not on rank 0).
    config_path: str | None = field(default=None)


def _config_main(argv: list[str]) -> int:
    from fulmen.checkpoint.io import CheckpointFileError
    from fulmen.errors import CheckpointIntegrityError

    try:
        run_cli(argv)
    except (ConfigError, CheckpointFileError, CheckpointIntegrityError) as err:
        # A configuration it cannot use, or a checkpoint refused (not one, damaged, unsafe, changed):
        # one line, before any run folder was made (the Trainer reads the checkpoint before its run starts).
        print(f"fulmen {argv[0]}: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help, --print_config
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    return 0


def run_cli(argv: Sequence[str] | None = None) -> CLIRun:
    """``fulmen STAGE [--config FILE ...] [--key value ...]`` in this process; returns what it built.

    ``argv`` (default ``sys.argv[1:]``) starts with the stage: ``fit``, ``validate``, ``test`` or
    ``predict``. Raises ``ConfigError`` for a configuration it cannot use and ``SystemExit(0)``
    after ``--help`` or ``--print_config``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in STAGES:
        raise ConfigError(f"the first argument must be one of {', '.join(STAGES)}; got {args[:1] or 'nothing'}.")
    stage, rest = args[0], args[1:]
    _importable_folders(rest)
    parser = _config_parser(stage)
    cfg = _parse(parser, rest)
    seed = _seed(cfg.get("seed_everything"))
    cfg["seed_everything"] = seed
    try:
        built = parser.instantiate(cfg)
    except Exception as err:  # the user's constructors: say which one failed
        raise ConfigError(_instantiate_error(cfg, err)) from err
    config = _plain_config(parser, cfg)
    system, datamodule = built["model"], built.get("data")
    trainer, saver = _build_trainer(built["trainer"], config)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "best" or (ckpt_path == "last" and stage != "fit"):
        which, ckpt_path = ckpt_path, _previous_run_checkpoint(trainer, ckpt_path)
        # said once the Trainer has read the file (the stage's setup), so a refused file is one line
        saver.announce = f"fulmen {stage}: ckpt_path={which!r} is {ckpt_path}"
    elif ckpt_path == "last":
        # fit resolves "last" itself (the newest version folder holding a checkpoint, and the
        # newest intact one when that is damaged) and names the file; asked here only so that no
        # checkpoint at all is a ConfigError (exit status 2), not a traceback.
        try:
            trainer._resolve_last_run("last")
        except FileNotFoundError:
            raise ConfigError(_no_earlier_checkpoint(trainer, "last")) from None
    elif ckpt_path is not None:
        _check_ckpt_path(str(ckpt_path))
    run = CLIRun(stage, trainer, system, datamodule, config)
    if stage == "fit":
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    elif stage == "predict":
        run.result = trainer.predict(system, datamodule=datamodule, ckpt_path=ckpt_path)
    else:
        run.result = getattr(trainer, stage)(system, datamodule=datamodule, ckpt_path=ckpt_path)
    run.config_path = saver.path
    return run


def _importable_folders(args: list[str]) -> None:
    """Class paths are imported from the current folder and from each config file's folder (so
    ``examples/digits.yaml`` can name ``digits.DigitsClassifier`` from ``examples/digits.py``)."""
    folders = [os.getcwd()]
    for i, arg in enumerate(args):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else args[i + 1] if arg == "--config" and i + 1 < len(args) else None
        if path and os.path.isfile(path):
            folders.append(os.path.dirname(os.path.abspath(path)))
    for n, folder in enumerate(dict.fromkeys(folders)):
        if folder not in sys.path and not (n == 0 and "" in sys.path):
            sys.path.insert(min(n, len(sys.path)), folder)


def _config_parser(stage: str) -> Any:
    try:
        from jsonargparse import ActionConfigFile, ArgumentParser
    except ImportError:
        raise ConfigError(
            f"fulmen {stage} --config needs the jsonargparse package, which is not installed. Install it with "
            f"`pip install 'jsonargparse[signatures]>=4.49'`."
        ) from None

    from fulmen.datamodule import DataModule
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

    parser = ArgumentParser(
        prog=f"fulmen {stage}",
        description=f"{_STAGE_HELP[stage].capitalize()}: build the system (--model), the datamodule (--data) and "
        f"the Trainer (--trainer) from YAML files and flags, then run Trainer.{stage}. Later values win: a "
        f"--config file overrides the ones before it, a flag overrides the files before it.",
        exit_on_error=False,
        allow_abbrev=False,
        print_config="--print_config",
    )
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="a YAML file with the keys seed_everything, ckpt_path, trainer, model, data; give several to merge "
        "them in order",
    )
    parser.add_argument(
        "--seed_everything",
        type=bool | int | None,
        default=None,
        help="seed every random number generator (and dataloader workers) before the system is built: an int, "
        "or true for a random seed (recorded in config.yaml); default: no seeding",
    )
    parser.add_argument(
        "--ckpt_path",
        type=str | None,
        default=None,
        help="a checkpoint to start from: a path, 'last' or 'best' (for validate/test/predict: of the latest "
        "run in the same folder)",
    )
    parser.add_class_arguments(Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)
    parser.add_subclass_arguments(System, "model", required=True, help="the fulmen.System: class_path and init_args")
    parser.add_subclass_arguments(
        DataModule, "data", required=False, help="a fulmen.DataModule: class_path and init_args (default: the system's data)"
    )
    return parser


def _parse(parser: Any, args: list[str]) -> Any:
    from argparse import ArgumentError

    try:
        return parser.parse_args(args)
    except ArgumentError as err:
        raise ConfigError(_explain(str(err), parser)) from None
    except (OSError, ValueError) as err:  # a config file that is missing or not YAML
        raise ConfigError(str(err)) from None


def _seed(value: Any) -> int | None:
    import random

    from fulmen.seed import seed_everything

    if value is None or value is False:
        return None
    if value is True:  # a fresh random seed (not FULMEN_GLOBAL_SEED left by an earlier run)
        value = random.SystemRandom().randint(0, 2**32 - 1)
    try:
        return seed_everything(value, workers=True)
    except ValueError as err:
        raise ConfigError(f"seed_everything: {err}") from None


def _plain_config(parser: Any, cfg: Any) -> dict[str, Any]:
    import yaml

    cfg = cfg.clone()
    for key in ("config", "print_config"):
        if key in cfg:
            del cfg[key]
    try:  # keep the keys whose value is None (jsonargparse < 4.49 calls the option skip_none)
        text = parser.dump(cfg, skip_validation=True, skip_unset=False)
    except TypeError:
        text = parser.dump(cfg, skip_check=True, skip_none=False)
    loaded = yaml.safe_load(text)
    return {k: loaded[k] for k in CONFIG_KEYS if k in loaded}


def _build_trainer(flags: Any, config: dict[str, Any]) -> tuple[Any, Any]:
    from fulmen.callbacks.base import Callback
    from fulmen.trainer.trainer import Trainer

    kwargs = dict(vars(flags))
    callbacks = kwargs.pop("callbacks", None)
    callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
    saver = _save_config_callback(config)
    try:
        trainer = Trainer(**kwargs, callbacks=[*callbacks, saver])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trainer: {err}") from err
    return trainer, saver


def _make_save_config() -> type:
    from fulmen.callbacks.base import Callback

    class SaveConfig(Callback):
        """Writes the effective configuration to ``config.yaml`` in the run folder (rank 0) when a
        stage starts; the Trainer records it in the run record (``run.json``) when fit starts."""

        def __init__(self, config: dict[str, Any]) -> None:
            self.config = config
            self.path: str | None = None
            self.announce: str | None = None  # the file --ckpt_path best|last resolved to, said at setup

        @property
        def state_key(self) -> str:
            return "fulmen.cli.SaveConfig"

        def setup(self, trainer: Any, system: Any, stage: str) -> None:
            if self.announce is not None and trainer.is_global_zero:
                print(self.announce, file=sys.stderr, flush=True)
            self.announce = None
            trainer.run_config = self.config  # recorded in run.json when fit starts
            if trainer.is_global_zero and self.path is None:
                self.path = _write_config(trainer.log_dir, self.config)

    return SaveConfig


def _save_config_callback(config: dict[str, Any]) -> Any:
    """A SaveConfig callback (its class is built on first use: fulmen.callbacks is imported lazily)."""
    global _save_config_cls
    if _save_config_cls is None:
        _save_config_cls = _make_save_config()
    return _save_config_cls(config)


_save_config_cls: Any = None


def _write_config(folder: str, config: dict[str, Any]) -> str:
    """``folder/config.yaml``; when one with other contents exists (a resumed run, a run without a
    logger in a shared folder), ``config-2.yaml``, ``config-3.yaml``... so none is overwritten."""
    import yaml

    from fulmen.loggers._yaml import replace_atomic

    os.makedirs(folder, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    stem, ext = os.path.splitext(CONFIG_FILE)
    n = 1
    while True:
        path = os.path.join(folder, CONFIG_FILE if n == 1 else f"{stem}-{n}{ext}")
        if not os.path.exists(path):
            replace_atomic(path, text)
            return path
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return path
        n += 1


def _check_ckpt_path(path: str) -> None:
    """A ``ckpt_path`` given as a path must name a checkpoint file (or a sharded checkpoint folder);
    checked before anything runs, so that a typo is a ConfigError and makes no run folder."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "meta.ckpt")):  # a sharded (FSDP) checkpoint folder
            return
        found = sorted(n for n in os.listdir(path) if n.endswith((".ckpt", ".pt", ".pth")))[:3]
        raise ConfigError(
            f"ckpt_path {path!r} is a folder, not a checkpoint file; pass a checkpoint file inside it"
            + (f" (it holds {', '.join(found)})." if found else ".")
        )
    import difflib

    near = difflib.get_close_matches(path, ["best", "last"], n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ConfigError(
        f"ckpt_path {path!r}: no such file. Pass the path of a checkpoint file, 'last' (the newest checkpoint of "
        f"the latest run) or 'best' (its best, by the ModelCheckpoint's monitor).{hint}"
    )


def _no_earlier_checkpoint(trainer: Any, which: str) -> str:
    """The message for ``--ckpt_path best|last`` when no earlier run left a checkpoint."""
    from fulmen.run_dir import fresh_folder_loggers

    fresh = fresh_folder_loggers(trainer.loggers)
    where = fresh[0].root_dir if fresh else trainer.default_root_dir
    none = "" if trainer.checkpoint_callbacks else " (checkpointing is off: no ModelCheckpoint callback)"
    return f"ckpt_path={which!r}: no checkpoint of an earlier run was found under {where}{none}. Pass a path."


def _previous_run_checkpoint(trainer: Any, which: str) -> str:
    """``fulmen test --ckpt_path best|last`` in a new process: that checkpoint of the latest run in the
    same folders (the loggers' newest version folder; ``default_root_dir`` without a logger). The
    new stage still logs into a new version folder."""
    from fulmen.checkpoint.io import load_checkpoint
    from fulmen.run_dir import newest_run_checkpoint

    def find() -> str | None:
        try:
            found = trainer._resolve_ckpt("last")
        except (FileNotFoundError, ValueError):
            return None
        return str(found) if found is not None and os.path.exists(found) else None

    # The newest version folder holding a checkpoint (a validate or test run makes folders without).
    last = newest_run_checkpoint(trainer.loggers, find, keep_version=False)
    if last is None:
        raise ConfigError(_no_earlier_checkpoint(trainer, which))
    if which == "last":
        return str(last)
    states = load_checkpoint(last, map_location="cpu").get("callbacks") or {}
    keys = [cb.state_key for cb in trainer.checkpoint_callbacks if cb.monitor is not None]
    for state in [states.get(k) for k in keys] + list(states.values()):
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best and os.path.isfile(best):
            return str(best)
    raise ConfigError(
        f"ckpt_path='best': the latest run ({last}) recorded no best checkpoint; give its ModelCheckpoint a "
        f"monitor (trainer.callbacks: class_path fulmen.callbacks.ModelCheckpoint, init_args: {{monitor: ...}}), "
        f"or use --ckpt_path last or a path."
    )


# -- errors a researcher can act on ---------------------------------------------------------------
def _close(name: str, options: Sequence[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, list(options), n=3, cutoff=0.6)
    if near:
        return f" Did you mean {' or '.join(repr(n) for n in near)}?"
    return f" Known: {', '.join(options)}." if options and len(options) <= 40 else ""


def _init_params(class_path: str) -> list[str] | None:
    """The constructor arguments of ``class_path`` (None when it takes ``**kwargs`` or cannot be found)."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_POSITIONAL]


def _trainer_flags() -> list[str]:
    import inspect

    from fulmen.trainer.trainer import Trainer

    return [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]


def _explain(message: str, parser: Any) -> str:
    """jsonargparse's message, or a shorter one naming the key and its close matches."""
    owner = re.search(r'Parser key "([\w.]+)"', message)
    where = owner.group(1) if owner else None
    m = re.search(r"unrecognized arguments: (.*)", message)
    if m:
        flags = [a.split("=", 1)[0] for a in m.group(1).split() if a.startswith("--")]
        if flags:
            key = flags[0][2:]
            group, _, leaf = key.rpartition(".")
            if group == "trainer":
                return f"unknown key {key!r}: Trainer has no flag {leaf!r}.{_close(leaf, _trainer_flags())}"
            options = [s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")]
            return f"unknown key {key!r}.{_close(key, options)} (`--help` lists the keys.)"
    m = re.search(r"Group '(\w+)' does not accept option '(\w+)'", message)
    if m:
        group, leaf = m.groups()
        options = _trainer_flags() if group == "trainer" else []
        what = "Trainer has no flag" if group == "trainer" else f"{group} has no key"
        return f"unknown key '{group}.{leaf}': {what} {leaf!r}.{_close(leaf, options)}"
    for class_path, leaf in re.findall(r"class_path '([\w.]+)':\s+Option '(\w+)' is not accepted", message):
        if leaf == "class_path":
            continue
        params = _init_params(class_path) or []
        if where in ("trainer.callbacks", "trainer.logger"):  # an item of a list
            key = f"'init_args.{leaf}' of {class_path} in {where}"
        else:
            key = f"'{where or 'model'}.init_args.{leaf}'"
        return f"unknown key {key}: {class_path} takes no argument {leaf!r}.{_close(leaf, params)}"
    m = re.search(r"class_path '([\w.]+)':\s+module '([\w.]+)' has no attribute '(\w+)'", message)
    if m:
        import importlib

        class_path, module, name = m.groups()
        try:
            names = [n for n, v in vars(importlib.import_module(module)).items() if isinstance(v, type)]
        except ImportError:
            names = []
        return f"{where or 'class_path'}: {module} has no class {name!r}.{_close(name, names)}"
    m = re.search(r"^Option '([\w.]+)' is not accepted", message)
    if m and where is None:
        leaf = m.group(1).split(".")[0]
        return f"unknown key {leaf!r}.{_close(leaf, [*CONFIG_KEYS])} (top-level keys: {', '.join(CONFIG_KEYS)})"
    expected = re.findall(r"Expected a <class '(\w+)'>", message)
    given = re.search(r"Given value: (.*)\s*$", message)
    if where and expected and given and "class_path" not in message:
        kinds = " or ".join(dict.fromkeys("null" if t == "NoneType" else t for t in expected))
        return f"{where}: expected {kinds}, got {given.group(1).strip()!r}."
    if "the following arguments are required: model" in message:
        return (
            "no system given: set model.class_path in a --config file or pass --model.class_path "
            "package.module.SystemClass (`--help` lists the keys)."
        )
    return message.strip()


def _instantiate_error(cfg: Any, err: Exception) -> str:
    return f"could not build the configured objects: {type(err).__name__}: {err}"

def _report(args: argparse.Namespace) -> int:
    from fulmen import report

    return report.run(args)


def _serve(args: argparse.Namespace) -> int:
    from fulmen import serve

    return serve.main(args)


def _audit(args: argparse.Namespace) -> int:
    from fulmen.audit import cli as audit_cli

    return audit_cli.run(args)


def _reproduce(args: argparse.Namespace) -> int:
    from fulmen.reproduce import run

    return run.main(args)


#: ``fulmen COMMAND``: the handler of each argparse subcommand (fit/validate/test/predict are
#: parsed by jsonargparse, see ``_config_main``).
_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": _checkpoint_command("verify"),
    "keygen": _checkpoint_command("keygen"),
    "sign": _checkpoint_command("sign"),
    "export": _checkpoint_command("export"),
    "doctor": _doctor,
    "report": _report,
    "reproduce": _reproduce,
    "audit": _audit,
    "serve": _serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fulmen`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in STAGES:
        return _config_main(args_list)
    args = _parser().parse_args(args_list)
    return _HANDLERS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
