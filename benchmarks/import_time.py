"""What importing fulmen costs on top of importing torch.

    .venv/bin/python benchmarks/import_time.py [--repeats 7] [--quick]

Every measurement is a fresh interpreter (``python -c ...``). Three commands:

* ``import torch``
* ``import torch; import fulmen``                       (the package; names load on first use)
* ``import torch; from fulmen import System, Trainer``  (what a training script does)

They run in alternating order, ``--repeats`` times each, after one discarded warm-up round, and
the medians are reported, timed two ways:

* wall clock, from outside (process start to exit): what a user waits for; on a busy machine the
  noise of starting Python and importing torch (hundreds of ms) can swamp fulmen's share;
* in process, ``time.perf_counter()`` around each import statement: exactly the time spent
  importing fulmen after torch. The verdict uses this one.

fulmen is imported as an installed package would be: from a byte-compiled copy of
``src/fulmen`` in a temp dir (put first on PYTHONPATH). An editable checkout run with
``PYTHONDONTWRITEBYTECODE=1`` has no .pyc files and compiles fulmen on every import; that case
is shown too ("checkout as is"), since it is what this environment's tests and examples pay.

Target: at most 0.15 s added over ``import torch``, for both fulmen commands. Then the modules
fulmen adds to ``sys.modules`` beyond torch's are listed, grouped by top-level package (so a heavy
import such as tensorboard, yaml or pandas shows up), with the slowest of them by
``-X importtime`` (median of several runs). The exit code is 0 either way: it is a report.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import fulmen

TARGET_S = 0.15
COMMANDS = {
    "torch": "import torch",
    "fulmen": "import torch; import fulmen",
    "System, Trainer": "import torch; from fulmen import System, Trainer",
}
REALISTIC = COMMANDS["System, Trainer"]
# Packages worth calling out when they appear (import cost, or a dependency fulmen should not need).
HEAVY = ("tensorboard", "tensorflow", "yaml", "tqdm", "numpy", "pandas", "scipy", "sklearn", "matplotlib", "PIL",
         "google", "grpc", "jinja2", "sympy", "rich", "requests", "fsspec")

# Times each statement of COMMANDS inside one fresh process.
_INPROCESS_SCRIPT = """
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import fulmen
t2 = time.perf_counter()
from fulmen import System, Trainer
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, fulmen.__file__)
"""

_MODULES_SCRIPT = """
import json, sys
import torch
before = set(sys.modules)
from fulmen import System, Trainer
print(json.dumps({"before": sorted(before), "added": sorted(set(sys.modules) - before)}))
"""


class Runner:
    """Runs ``python -c`` in a clean environment; ``pythonpath`` puts a fulmen copy first."""

    def __init__(self, pythonpath: str | None) -> None:
        env = dict(os.environ)
        for var in ("PYTHONPROFILEIMPORTTIME", "PYTHONVERBOSE", "PYTHONDEVMODE", "PYTHONPATH"):
            env.pop(var, None)
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        self.env = env

    def run(self, code: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *flags, "-c", code], check=True, env=self.env, capture_output=True,
                              text=True)

    def wall(self, code: str) -> float:
        t0 = time.perf_counter()
        self.run(code)
        return time.perf_counter() - t0

    def in_process(self) -> tuple[float, float, float, str]:
        """(import torch, then import fulmen, then from fulmen import System, Trainer), and fulmen's file."""
        a, b, c, path = self.run(_INPROCESS_SCRIPT).stdout.split()[-4:]
        return float(a), float(b), float(c), path


def compiled_copy(dest: str) -> str:
    """A byte-compiled copy of the fulmen package under ``dest`` (like a non-editable install)."""
    src = os.path.dirname(os.path.abspath(fulmen.__file__))
    shutil.copytree(src, os.path.join(dest, "fulmen"), ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(os.path.join(dest, "fulmen"), quiet=1)
    return dest


def import_times(runner: Runner, code: str) -> list[tuple[int, str, int, int]]:
    """``-X importtime`` rows in import order: (depth, module, self us, cumulative us)."""
    rows = []
    for line in runner.run(code, "-X", "importtime").stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|", 2)
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((depth, name.strip(), int(self_us), int(cum_us)))
    return rows


def after_torch(rows: list[tuple[int, str, int, int]]) -> list[tuple[int, str, int, int]]:
    """The rows imported after ``import torch`` finished (-X importtime prints a module when its
    import completes, so torch's own top-level row comes after all of its imports)."""
    for i, (depth, name, _, _) in enumerate(rows):
        if depth == 0 and name == "torch":
            return rows[i + 1 :]
    return rows


def measure(runner: Runner, repeats: int, wall: bool) -> dict[str, Any]:
    names = list(COMMANDS)
    for name in names:  # warm-up: page cache
        runner.wall(COMMANDS[name])
    runner.in_process()
    times: dict[str, list[float]] = {name: [] for name in names}
    inproc: list[tuple[float, float, float, str]] = []
    for r in range(repeats):
        if wall:
            k = r % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(runner.wall(COMMANDS[name]))
        inproc.append(runner.in_process())
    return {"times": times, "inproc": inproc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--top", type=int, default=15, help="slowest fulmen-attributable imports to list")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats")
    args = parser.parse_args()
    repeats = 2 if args.quick else max(args.repeats, 1)

    with tempfile.TemporaryDirectory(prefix="fulmen-import-") as tmp:
        installed = Runner(compiled_copy(tmp))
        checkout = Runner(None)
        res = measure(installed, repeats, wall=True)
        res_checkout = measure(checkout, repeats, wall=False)
        mods = json.loads(installed.run(_MODULES_SCRIPT).stdout.strip().splitlines()[-1])
        n_runs = 3 if args.quick else 5
        xrows = [after_torch(import_times(installed, REALISTIC)) for _ in range(n_runs)]
    report(args, repeats, res, res_checkout, mods, xrows)


def report(
    args: argparse.Namespace,
    repeats: int,
    res: dict[str, Any],
    res_checkout: dict[str, Any],
    mods: dict[str, list[str]],
    xrows: list[list[tuple[int, str, int, int]]],
) -> None:
    times, inproc = res["times"], res["inproc"]
    names = list(COMMANDS)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    # Paired by round: less sensitive to slow drifts in machine load than a difference of medians.
    paired = {name: statistics.median(t - b for t, b in zip(times[name], times["torch"])) for name in names}

    print(f"import time: fresh interpreter per run, medians of {repeats} (alternating order), "
          f"Python {sys.version.split()[0]}, {sys.executable}")
    print()
    print("wall clock, process start to exit (fulmen byte-compiled, as installed):")
    print(f"  {'command':<52} {'median':>8} {'min':>8} {'max':>8} {'added':>8} {'paired':>8}")
    for name in names:
        ts = times[name]
        extra = "" if name == "torch" else f"{med[name] - med['torch']:>+7.3f}s {paired[name]:>+7.3f}s"
        print(f"  {COMMANDS[name]:<52} {med[name]:>7.3f}s {min(ts):>7.3f}s {max(ts):>7.3f}s {extra}")
    print("  (added: difference of medians; paired: median over rounds of (command - import torch))")

    print()
    print("in process, perf_counter around each statement:")
    verdicts = []
    for label, rows, judged in (
        ("fulmen byte-compiled, as installed", inproc, True),
        ("checkout as is: editable, " + ("PYTHONDONTWRITEBYTECODE=1, so no .pyc"
                                         if os.environ.get("PYTHONDONTWRITEBYTECODE") else "its own .pyc state"),
         res_checkout["inproc"], False),
    ):
        torch_s = statistics.median(x[0] for x in rows)
        plain = statistics.median(x[1] for x in rows)
        realistic = statistics.median(x[1] + x[2] for x in rows)
        print(f"  [{label}; fulmen from {os.path.dirname(os.path.dirname(rows[0][3]))}]")
        print(f"    import torch                                   {torch_s:>8.3f}s")
        for what, added in (("import fulmen", plain), ("from fulmen import System, Trainer", realistic)):
            ok = added <= TARGET_S
            verdict = f"{'PASS' if ok else 'FAIL'} (target <= {TARGET_S:.2f} s)"
            print(f"    then {what:<41} {added:>+8.3f}s  {verdict}")
            if judged:
                verdicts.append(f"{what}: +{added * 1e3:.1f} ms {'PASS' if ok else 'FAIL'}")

    added_mods = mods["added"]
    before_top = {m.split(".")[0] for m in mods["before"]}
    groups = collections.Counter(m.split(".")[0] for m in added_mods)
    print()
    print(f"modules that `{REALISTIC.split('; ', 1)[1]}` adds after `import torch`: {len(added_mods)}")
    for pkg, n in groups.most_common():
        flag = "  <- watched third-party package" if pkg in HEAVY else ""
        print(f"  {pkg:<28} {n:>4} module(s){flag}")
    already = [p for p in HEAVY if p in before_top]
    print(f"  (watched packages torch has already imported, free for fulmen: {', '.join(already) or 'none'})")

    # Keyed by (module, depth): a package's row appears again, nested, under its first submodule.
    per_module: dict[tuple[str, int], list[tuple[int, int]]] = collections.defaultdict(list)
    for rows_ in xrows:
        for depth, name, self_us, cum_us in rows_:
            per_module[name, depth].append((self_us, cum_us))
    summary = [
        (name, depth, statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
        for (name, depth), vals in per_module.items()
    ]
    by_pkg: dict[str, float] = collections.defaultdict(float)
    for name, _, self_us, _ in summary:
        by_pkg[name.split(".")[0]] += self_us
    total = statistics.median(sum(r[2] for r in rows_) for rows_ in xrows)
    print()
    print(f"-X importtime after `import torch` (median of {len(xrows)} runs; -X importtime inflates times a "
          f"little): {total / 1e3:.1f} ms in total")
    print("  self time by top-level package: "
          + ", ".join(f"{p} {us / 1e3:.1f} ms" for p, us in sorted(by_pkg.items(), key=lambda kv: -kv[1])))
    print(f"  slowest {args.top} by cumulative time (depth 0 = imported by the -c line itself):")
    print(f"    {'cumul ms':>8} {'self ms':>8} {'depth':>5}  module")
    for name, depth, self_us, cum_us in sorted(summary, key=lambda s: -s[3])[: args.top]:
        print(f"    {cum_us / 1e3:>8.2f} {self_us / 1e3:>8.2f} {depth:>5}  {name}")

    print()
    print("verdict (in process, as installed): " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
