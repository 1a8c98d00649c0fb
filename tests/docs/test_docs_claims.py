"""What the docs say the code takes, the code takes.

``test_docs.py`` runs every ```python block; this file checks what no block runs: every call to a
fulmen class or function written in docs/*.md and README.md (in a code block or an inline code
span, e.g. `ModelCheckpoint(every_n_train_steps=10)` or `trainer.fit(system, ckpt_path="last")`)
passes only keyword arguments its signature has; the rows of the Trainer's flag table
(docs/trainer.md) and of ``self.log``'s argument table (docs/logging.md) are parameters of those
signatures, and a ``self.log`` row says an argument does nothing exactly when ``System.log``
ignores it; and every ``fulmen <command> --option`` written in a page (a shell line or an inline
span starting with ``fulmen``) is an option of that command's parser, or, where the page shows the
command failing (its error on the next line), one it refuses.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fulmen
from fulmen import cli

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^[ \t]*(`{3,})([^`]*)$")
_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
# Modules whose public names a page may call (bare, or through the module).
_MODULES = (
    "fulmen",
    "fulmen.callbacks",
    "fulmen.loggers",
    "fulmen.profilers",
    "fulmen.checkpoint",
    "fulmen.checkpoint.audit",
    "fulmen.report",
    "fulmen.lightning",
    "fulmen.lightning.callbacks",
    "fulmen.lightning.loggers",
)
# Receivers whose methods are checked: `trainer.fit(...)` (also `dm_trainer.fit`), `self.log(...)`,
# `tuner.lr_find(...)`; `AnyClass.load_from_checkpoint(...)` is System's.
_RECEIVERS = {
    "trainer": "fulmen.Trainer",
    "self": "fulmen.System",
    "system": "fulmen.System",
    "model": "fulmen.System",
    "tuner": "fulmen.Tuner",
}
_CLASS_METHODS = {"load_from_checkpoint": "fulmen.System"}
_CONFIG_STAGES = cli.STAGES


def _pages() -> list[Path]:
    return [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


@dataclass
class Snippet:
    page: str
    line: int
    lang: str  # the fence's language, "" for an inline span
    text: str


def snippets(path: Path) -> Iterator[Snippet]:
    """The fenced blocks and the inline code spans of a page, with their line numbers."""
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is not None:
            j = i + 1
            while j < len(lines) and lines[j].strip() != m[1]:
                j += 1
            yield Snippet(name, i + 2, (m[2].strip().split() or [""])[0].lower(), "\n".join(lines[i + 1 : j]))
            i = j + 1
            continue
        for span in _SPAN.finditer(lines[i]):
            yield Snippet(name, i + 1, "", span[2].strip())
        i += 1


# -- calls ---------------------------------------------------------------------------------------------
def _registry() -> dict[str, list[tuple[str, Any]]]:
    """Public name -> [(module, object)] for the classes and functions of ``_MODULES``."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        for attr in getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]:
            obj = getattr(module, attr, None)
            if callable(obj) and (inspect.isclass(obj) or inspect.isfunction(obj)):
                if not any(o is obj for _, o in out.get(attr, [])):
                    out.setdefault(attr, []).append((module_name, obj))
    return out


REGISTRY = _registry()


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _parse(text: str) -> ast.AST | None:
    for mode in ("exec", "eval"):
        try:
            return ast.parse(text, mode=mode)
        except SyntaxError:
            continue
    return None


@dataclass
class PageNames:
    """What a page's code binds: aliases of fulmen modules, names imported from fulmen, and names
    it defines itself (which are not fulmen's)."""

    aliases: dict[str, str]
    imported: dict[str, str]
    defined: set[str]


def page_names(blocks: list[Snippet]) -> PageNames:
    names = PageNames({"fulmen": "fulmen", "L": "fulmen.lightning", "pl": "fulmen.lightning"}, {}, set())
    for block in blocks:
        tree = _parse(block.text)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("fulmen"):
                        names.aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if node.module.startswith("fulmen"):
                        try:
                            importlib.import_module(target)
                            names.aliases[alias.asname or alias.name] = target
                        except ImportError:
                            names.imported[alias.asname or alias.name] = node.module
                    else:
                        names.defined.add(alias.asname or alias.name)
            elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.defined.add(node.name)
            elif isinstance(node, ast.Assign):
                for target_node in node.targets:
                    if isinstance(target_node, ast.Name):
                        names.defined.add(target_node.id)
    return names


def _targets(func: ast.AST, names: PageNames) -> list[tuple[str, Callable[..., Any]]]:
    """The fulmen callables a call's function may be: ``(shown name, object)``."""
    dotted = _dotted(func)
    if dotted is None:
        return []
    head, _, rest = dotted.partition(".")
    if not rest:  # a bare name
        if head in names.defined:
            return []
        if head in names.imported:
            obj = getattr(importlib.import_module(names.imported[head]), head, None)
            return [(f"{names.imported[head]}.{head}", obj)] if callable(obj) else []
        return [(f"{m}.{head}", o) for m, o in REGISTRY.get(head, [])]
    receiver = "trainer" if re.fullmatch(r"(\w+_)?trainer", head) else head
    if receiver in _RECEIVERS and "." not in rest:
        method = getattr(_resolve(_RECEIVERS[receiver]), rest, None)
        return [(f"{_RECEIVERS[receiver]}.{rest}", method)] if inspect.isfunction(method) else []
    attr = dotted.rpartition(".")[2]
    if attr in _CLASS_METHODS and head not in names.aliases:
        return [(f"{_CLASS_METHODS[attr]}.{attr}", getattr(_resolve(_CLASS_METHODS[attr]), attr))]
    if head in names.aliases:
        try:
            obj = _resolve(f"{names.aliases[head]}.{rest}")
        except (ImportError, AttributeError):
            return []
        return [(f"{names.aliases[head]}.{rest}", obj)] if callable(obj) else []
    return []


def _resolve(dotted: str) -> Any:
    """``fulmen.Trainer``, ``fulmen.System.log``, ``fulmen.callbacks.EarlyStopping``: the object
    a dotted name names (the longest importable prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def _parameters(obj: Any) -> tuple[set[str], bool] | None:
    """The keyword names ``obj`` takes, and whether it takes ``**kwargs``; None when unknown."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = sig.parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def call_problems(snippet: Snippet, names: PageNames) -> list[str]:
    if snippet.lang not in ("python", "py", "") or "(" not in snippet.text:
        return []
    tree = _parse(snippet.text)
    if tree is None:
        return []
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        given = [k.arg for k in node.keywords if k.arg is not None]
        if not given:
            continue
        targets = [(shown, obj) for shown, obj in _targets(node.func, names) if obj is not None]
        found = [(shown, _parameters(obj)) for shown, obj in targets]
        known = [(shown, p) for shown, p in found if p is not None]
        if not known or any(var for _, (_, var) in known):
            continue
        accepted = set().union(*(p for _, (p, _) in known))
        unknown = [k for k in given if k not in accepted]
        if unknown:
            shown = " / ".join(s for s, _ in known)
            problems.append(
                f"{snippet.page}:{snippet.line}: `{ast.unparse(node)[:120]}` passes {', '.join(u + '=' for u in unknown)} "
                f"but {shown} takes no such argument"
            )
    return problems


# -- flag tables ---------------------------------------------------------------------------------------
_TABLES = {  # page -> (the table's header first cell, the signature its first column lists, check use)
    "docs/trainer.md": ("Flag", "fulmen.Trainer", False),
    "docs/logging.md": ("Argument", "fulmen.System.log", True),
}
# A row saying that an argument does nothing (for compatibility only).
_INERT = re.compile(r"\bignored\b|nothing to|no effect|does nothing|accepted for compatibility", re.IGNORECASE)


def _used_names(function: Any) -> set[str]:
    """The names a function's body reads (its parameters that do something)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    (node,) = tree.body
    assert isinstance(node, ast.FunctionDef)
    body = node.body[1:] if ast.get_docstring(node) else node.body
    return {n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def table_problems(path: Path, name: str | None = None) -> list[str]:
    """The first column of the page's flag/argument table names parameters of the signature; for
    ``self.log``, a row saying an argument does nothing names one the code does not read, and any
    other row one it does. ``name``: the page the table is checked as (default: its path)."""
    name = name or path.relative_to(ROOT).as_posix()
    if name not in _TABLES:
        return []
    header, target, check_use = _TABLES[name]
    function = _resolve(target)
    params, _ = _parameters(function) or (set(), True)
    used = _used_names(function) if check_use else None
    problems, rows, inside = [], 0, False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            inside = False
            continue
        if cells[0] == header:
            inside = True
            continue
        if not inside or set(cells[0]) <= set("-: "):
            continue
        inert = bool(_INERT.search(" ".join(cells[1:])))
        for flag in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[0]):
            rows += 1
            if flag not in params:
                problems.append(f"{name}:{number}: the table lists `{flag}`, which {target} does not take")
            elif used is not None and inert and flag in used:
                problems.append(f"{name}:{number}: the table says `{flag}` does nothing, but {target} uses it")
            elif used is not None and not inert and flag not in used:
                problems.append(
                    f"{name}:{number}: the table says what `{flag}` does, but {target} ignores it (say so in the row)"
                )
    assert rows, f"{name}: no row found in the {header!r} table"
    return problems


# -- the fulmen command --------------------------------------------------------------------------------
# A command line: at the start of a shell line (after an optional prompt) or of an inline span.
_COMMAND = re.compile(r"^\s*(?:\$\s+)?(?:python -m )?fulmen ([\w|/]+)((?:[ \t]+[^\s`|;&]+)*)")
_SHELL = ("", "bash", "sh", "shell", "console", "text")


def _subcommand_options() -> dict[str, set[str]]:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = {name: set(p._option_string_actions) for name, p in sub.choices.items() if name not in _CONFIG_STAGES}
    for stage in _CONFIG_STAGES:
        out[stage] = set(cli._config_parser(stage)._option_string_actions)
    return out


OPTIONS = _subcommand_options()


def option_refused(command: str, option: str) -> bool | None:
    """Whether ``fulmen command`` refuses ``option``; None when it cannot be told from the parser
    (the options of the user's own system and datamodule: ``--model.*``, ``--data.*``)."""
    option = re.split(r"[=+]", option, maxsplit=1)[0]
    known = OPTIONS[command]
    if command in _CONFIG_STAGES:
        head, _, rest = option.partition(".")
        if head in ("--model", "--data") and rest:
            return None
        if head == "--trainer" and rest:
            return f"--trainer.{rest.split('.')[0]}" not in known
    return option not in known


def command_problems(snippet: Snippet) -> list[str]:
    if snippet.lang not in _SHELL:
        return []
    problems = []
    lines = snippet.text.splitlines()
    for k, line in enumerate(lines):
        for m in _COMMAND.finditer(line):  # (one per line)
            command = m[1]
            if command not in OPTIONS:
                if not re.fullmatch(r"[a-z]+", command):  # fit|validate|test|predict, fit/validate/...
                    continue
                problems.append(f"{snippet.page}:{snippet.line + k}: `fulmen {command}` is not a fulmen command")
                continue
            # A command the page shows failing: the next line is its error message.
            shown_failing = k + 1 < len(lines) and lines[k + 1].startswith(f"fulmen {command}: ")
            for option in re.findall(r"(?<!\S)(--?[A-Za-z][\w.+=-]*)", m[2]):
                refused = option_refused(command, option)
                if refused is None:
                    continue
                if refused and not shown_failing:
                    problems.append(f"{snippet.page}:{snippet.line + k}: `fulmen {command}` has no option {option}")
                elif shown_failing and not refused and option.startswith("--trainer."):
                    problems.append(
                        f"{snippet.page}:{snippet.line + k}: the page shows `fulmen {command} {option}` failing, "
                        f"but {option} is an option of it"
                    )
    return problems


# -- the tests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_name_only_arguments_the_code_takes(page: Path) -> None:
    found = list(snippets(page))
    names = page_names([s for s in found if s.lang in ("python", "py")])
    problems = table_problems(page)
    for snippet in found:
        problems += call_problems(snippet, names)
        problems += command_problems(snippet)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_false_claims(tmp_path: Path) -> None:
    """Each check fails on a page that claims something the code refuses."""
    page = tmp_path / "page.md"
    page.write_text(
        "Use `fulmen.Trainer(max_epoch=3)` or `ModelCheckpoint(every_n_steps=10)`.\n"
        "```python\ntrainer.fit(system, ckpt='last')\nself.log('loss', loss, sync=True)\n```\n"
        "Run `fulmen verify RUN --fast`, then\n```bash\nfulmen fit --config c.yaml --trainer.max_epoch 3\n```\n"
        "```text\n$ fulmen fit --trainer.max_epochs 3\nfulmen fit: unknown key\n```\n"
    )
    found = list(snippets(page))
    names = page_names([s for s in found if s.lang == "python"])
    problems = [p for s in found for p in call_problems(s, names) + command_problems(s)]
    assert [p.split(": ", 1)[1].split(" passes ")[-1].split(" has ")[-1] for p in problems] == [
        "max_epoch= but fulmen.Trainer takes no such argument",
        "every_n_steps= but fulmen.ModelCheckpoint takes no such argument",
        "ckpt= but fulmen.Trainer.fit takes no such argument",
        "sync= but fulmen.System.log takes no such argument",
        "no option --fast",
        "no option --trainer.max_epoch",
        "the page shows `fulmen fit --trainer.max_epochs` failing, but --trainer.max_epochs is an option of it",
    ]

    table = tmp_path / "table.md"
    table.write_text(
        "| Argument | Default | Meaning |\n|---|---|---|\n"
        "| `prog_bar` | `False` | also show it on the progress bar |\n"
        "| `sync_dist` | | accepted for compatibility; there is nothing to synchronise |\n"
        "| `rank_zero_only` | | log from rank 0 only |\n"
        "| `sync` | | reduce over processes |\n"
    )
    assert table_problems(table, "docs/logging.md") == [
        "docs/logging.md:4: the table says `sync_dist` does nothing, but fulmen.System.log uses it",
        "docs/logging.md:5: the table says what `rank_zero_only` does, but fulmen.System.log ignores it (say so in the "
        "row)",
        "docs/logging.md:6: the table lists `sync`, which fulmen.System.log does not take",
    ]


def test_fulmen_names_are_registered() -> None:
    """The checks know the public classes they are about (a rename would silently skip them)."""
    for name in ("Trainer", "ModelCheckpoint", "EarlyStopping", "CSVLogger", "TensorBoardLogger", "save_predictions"):
        assert name in REGISTRY, name
    assert any(o is fulmen.Trainer for _, o in REGISTRY["Trainer"])
