"""Every ```python block in docs/*.md and README.md runs as written.

The blocks of one page run in order in one namespace, in a fresh temporary working directory,
on CPU with one thread. Blocks that are not meant to run are fenced as ```text. The pytest
configuration turns FulmenWarning into an error, so a snippet that triggers a fulmen warning
fails too.
"""

from __future__ import annotations

import os
import random
import re
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`]*)$")


def _pages() -> list[Path]:
    pages = sorted((ROOT / "docs").glob("*.md"))
    readme = ROOT / "README.md"
    if readme.is_file():
        pages.append(readme)
    return pages


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of each fenced block whose info string is ``python``."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, ticks = m["indent"], m["ticks"]
        lang = m["info"].strip().split(" ")[0].lower() if m["info"].strip() else ""
        start = i + 1
        j = start
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if close is not None and close["ticks"] == ticks and not close["info"].strip():
                break
            j += 1
        else:
            raise ValueError(f"the code fence opened on line {i + 1} is never closed")
        if lang == "python":
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[start:j]]
            blocks.append((start + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _first_line(source: str) -> str:
    return next((line.strip() for line in source.splitlines() if line.strip()), "<empty>")


@pytest.fixture
def _global_state() -> Iterator[None]:
    """Snippets may seed, set deterministic mode or env vars: put everything back afterwards."""
    env = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    threads = torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    random.setstate(rng[0])
    np.random.set_state(rng[1])
    torch.set_rng_state(rng[2])
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _global_state: None
) -> None:
    name = page.relative_to(ROOT).as_posix()
    try:
        blocks = python_blocks(page.read_text(encoding="utf-8"))
    except ValueError as err:
        pytest.fail(f"{name}: {err}")
    monkeypatch.chdir(tmp_path)
    for var in ("WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR"):  # W&B's own folders
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    torch.set_num_threads(1)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for n, (line, source) in enumerate(blocks, start=1):
        try:
            code = compile(source, f"{name}:{line}", "exec")
            exec(code, namespace)
        except (Exception, SystemExit) as err:
            detail = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-12:])
            pytest.fail(
                f"{name}: python block {n} (line {line}, starting {_first_line(source)!r}) failed:\n{detail}",
                pytrace=False,
            )


def test_block_extraction() -> None:
    text = "\n".join(
        [
            "intro",
            "```python",
            "a = 1",
            "```",
            "```text",
            "not run",
            "```",
            "- item",
            "  ```python",
            "  b = a + 1",
            "  ```",
            "````markdown",
            "```python",
            "inside = 'a quoted fence'",
            "```",
            "````",
        ]
    )
    assert python_blocks(text) == [(3, "a = 1\n"), (10, "b = a + 1\n")]
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")
