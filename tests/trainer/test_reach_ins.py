"""The Trainer is not a shared, writable store: the rest of fulmen reads its state through public
objects (``trainer.loop``, ``trainer.metrics``, ``trainer.config``) and changes the run through
public methods (``trainer.should_stop = True``, ``skip_optimizer_step()``, ``request_stop()``).

Measured with ``ast`` over ``src/fulmen``: every use of one of the Trainer's private names
(``self._x`` in ``trainer/trainer.py``, its private methods) on an expression that names a trainer
(``trainer``, ``self.trainer``, ``self._trainer``, ``quiet_trainer``, ... or ``self`` inside a
``Trainer`` subclass), also through ``getattr``/``setattr`` with the name as a string.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import fulmen

SRC = Path(fulmen.__file__).parent
TRAINER_MODULE = "trainer/trainer.py"

#: The limits (issue 14): outside ``fulmen/trainer/`` at most 15 reads and no writes; at most 40
#: uses in all outside ``trainer/trainer.py`` (the loop modules in ``trainer/`` included).
MAX_READS_OUTSIDE = 15
MAX_USES_BEYOND_TRAINER_MODULE = 40


def _private_names() -> set[str]:
    tree = ast.parse((SRC / TRAINER_MODULE).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            names.update(f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _names_a_trainer(node: ast.expr, self_is_trainer: bool) -> bool:
    if isinstance(node, ast.Name):
        return "trainer" in node.id.lower() or (node.id == "self" and self_is_trainer)
    if isinstance(node, ast.Attribute):
        return "trainer" in node.attr.lower()
    return False


def _trainer_subclasses(tree: ast.Module) -> list[ast.ClassDef]:
    def base_name(b: ast.expr) -> str:
        return b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""

    return [
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and any("Trainer" in base_name(b) for b in n.bases)
    ]


def reach_ins(src: Path = SRC) -> list[tuple[str, int, str, str]]:
    """(module, line, "read" | "write", name) for every use of a private Trainer name outside
    ``trainer/trainer.py``."""
    private = _private_names()
    found: list[tuple[str, int, str, str]] = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel == TRAINER_MODULE:
            continue
        tree = ast.parse(path.read_text())
        in_subclass = {id(n) for cls in _trainer_subclasses(tree) for n in ast.walk(cls)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                if _names_a_trainer(node.value, id(node) in in_subclass):
                    kind = "write" if isinstance(node.ctx, (ast.Store, ast.Del)) else "read"
                    found.append((rel, node.lineno, kind, node.attr))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in private
                and _names_a_trainer(node.args[0], False)
            ):
                kind = "write" if node.func.id in ("setattr", "delattr") else "read"
                found.append((rel, node.lineno, kind, str(node.args[1].value)))
    return found


def _public_state_writes(src: Path = SRC) -> list[tuple[str, int, str]]:
    """Assignments to ``<trainer>.loop.<x>`` / ``<trainer>.metrics.<x>`` outside ``fulmen/trainer/``:
    the loops own that state; others go through the Trainer's methods."""
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel.startswith("trainer/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if (
                        isinstance(sub, ast.Attribute)
                        and isinstance(sub.value, ast.Attribute)
                        and sub.value.attr in ("loop", "metrics")
                        and _names_a_trainer(sub.value.value, False)
                    ):
                        found.append((rel, node.lineno, f"{sub.value.attr}.{sub.attr}"))
    return found


def test_the_rest_of_fulmen_does_not_reach_into_the_trainer() -> None:
    uses = reach_ins()
    outside = [u for u in uses if not u[0].startswith("trainer/")]
    writes_outside = [u for u in outside if u[2] == "write"]
    reads_outside = [u for u in outside if u[2] == "read"]
    assert not writes_outside, f"private Trainer attributes written outside fulmen/trainer/: {writes_outside}"
    assert len(reads_outside) <= MAX_READS_OUTSIDE, (
        f"{len(reads_outside)} reads of private Trainer attributes outside fulmen/trainer/ (at most "
        f"{MAX_READS_OUTSIDE}): {Counter(u[0] for u in reads_outside)}"
    )
    assert len(uses) <= MAX_USES_BEYOND_TRAINER_MODULE, (
        f"{len(uses)} uses of private Trainer attributes outside trainer/trainer.py (at most "
        f"{MAX_USES_BEYOND_TRAINER_MODULE}): {Counter(u[0] for u in uses).most_common()}"
    )


def test_loop_and_metric_state_is_written_by_the_loops_only() -> None:
    assert _public_state_writes() == []


def test_the_measure_finds_a_reach_in(tmp_path: Path) -> None:
    """The counter itself: a module that writes and reads private Trainer state is counted."""
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "trainer.py").write_text((SRC / TRAINER_MODULE).read_text())
    (tmp_path / "callbacks.py").write_text(
        "def on_x(trainer, system):\n"
        "    trainer._hooks = None\n"
        "    h = system.trainer._hooks\n"
        "    return getattr(trainer, '_hooks', None)\n"
        "class MyTrainer(Trainer):\n"
        "    def f(self):\n"
        "        return self._hooks\n"
        "def g(trainer):\n"
        "    trainer.loop.batches_done = 3\n"
    )
    found = sorted((line, kind) for _, line, kind, _ in reach_ins(tmp_path))
    assert found == [(2, "write"), (3, "read"), (4, "read"), (7, "read")]
    assert _public_state_writes(tmp_path) == [("callbacks.py", 9, "loop.batches_done")]
