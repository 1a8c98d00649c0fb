"""What ``fulmen.doctor`` reports: ``Finding`` (one result), ``Report`` (all of them, printed as the
report) and ``Findings`` (the list the checks add to), with the words they are written in."""

from __future__ import annotations

import math
import os
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["LEVELS", "Finding", "Findings", "Report"]

LEVELS = ("problem", "warning", "ok")


@dataclass(frozen=True)
class Finding:
    """One result of ``doctor``: ``level`` is ``"ok"``, ``"warning"`` or ``"problem"``; ``check``
    names the check (``"data"``, ``"loss"``, ``"gradients"``, ``"device"``, ``"modes"``,
    ``"monitor"``, ``"overlap"``, ``"hooks"``); ``explanation`` says why it matters and the fix."""

    level: str
    title: str
    explanation: str = ""
    check: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Finding(level={self.level!r}): expected one of {', '.join(map(repr, LEVELS))}.")

    def __str__(self) -> str:
        return f"{self.level}: {self.title}"


class Report:
    """What ``doctor`` found. ``str(report)`` is the printed report."""

    def __init__(self, system_name: str, device: str, findings: list[Finding]) -> None:
        self.system_name = system_name
        self.device = device
        self.findings = list(findings)

    @property
    def problems(self) -> list[Finding]:
        """Findings that break training or make its results wrong."""
        return [f for f in self.findings if f.level == "problem"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that are often mistakes, but may be on purpose."""
        return [f for f in self.findings if f.level == "warning"]

    @property
    def passed(self) -> list[Finding]:
        """The checks that found nothing wrong."""
        return [f for f in self.findings if f.level == "ok"]

    @property
    def ok(self) -> bool:
        """True when there are no problems (warnings allowed)."""
        return not self.problems

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def __repr__(self) -> str:
        return (
            f"Report({self.system_name}: {len(self.problems)} problem(s), {len(self.warnings)} warning(s), "
            f"{len(self.passed)} ok)"
        )

    def __str__(self) -> str:
        n_p, n_w = len(self.problems), len(self.warnings)
        lines = [
            f"fulmen doctor: {self.system_name} on {self.device}: {n_p} problem{'s' * (n_p != 1)}, "
            f"{n_w} warning{'s' * (n_w != 1)}, {len(self.passed)} ok",
            "",
        ]
        tags = {"problem": "PROBLEM", "warning": "WARNING", "ok": "ok"}
        for level in LEVELS:
            for f in self.findings:
                if f.level != level:
                    continue
                lines.append(f"{tags[level]:<8} {f.title}")
                if f.explanation and level != "ok":
                    for para in f.explanation.split("\n"):
                        lines.extend(textwrap.wrap(para, 92, initial_indent=" " * 9, subsequent_indent=" " * 9) or [""])
        return "\n".join(lines)


class Findings:
    """The findings of one ``doctor`` run, in the order the checks add them."""

    def __init__(self) -> None:
        self.items: list[Finding] = []

    def add(self, level: str, check: str, title: str, explanation: str = "") -> None:
        self.items.append(Finding(level, title, explanation, check))

    def failed(self, where: str, err: BaseException, check: str = "hooks") -> None:
        """``where`` raised ``err``: a problem, with the message and the place in the user's code."""
        self.add("problem", check, f"{where} raised {type(err).__name__}", f"{err}{location(err)}")

    def insert(self, index: int, other: Findings) -> None:
        """Put ``other``'s findings at ``index`` (a section found out after the ones that follow it)."""
        self.items[index:index] = other.items

    def __len__(self) -> int:
        return len(self.items)


# -- words ------------------------------------------------------------------------------------------
def names(names: list[str], limit: int = 6) -> str:
    shown = [n or type(None).__name__ for n in names[:limit]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def verb(n: int) -> str:
    return "gets" if n == 1 else "get"


def count(n: int | float) -> str:
    return "an unknown number of" if math.isinf(n) else str(n)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def location(err: BaseException) -> str:
    """`` (at file:line, in function)`` of the innermost frame of ``err`` outside fulmen and torch."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    import fulmen

    skip = (os.path.dirname(os.path.abspath(fulmen.__file__)), os.path.dirname(os.path.abspath(torch.__file__)))
    mine = [f for f in frames if not os.path.abspath(f.filename).startswith(skip)]
    f = (mine or frames)[-1]
    return f" (at {f.filename}:{f.lineno}, in {f.name})"
