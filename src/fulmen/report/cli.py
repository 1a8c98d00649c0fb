"""``fulmen report RUN_DIR [RUN_DIR ...] [--out DIR]``: the command line of ``write_report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``fulmen report`` (for a sub-command parser)."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (each holding metrics.csv)")
    parser.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="where to write index.html and the PNGs (default: RUN_DIR/report for one run, ./fulmen-report for several)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the report ``args`` describe; print the page's path (exit 0), or one line saying why
    not: exit 2 for a folder or file it cannot use (missing, not a run folder, damaged, refused),
    1 without matplotlib."""
    import pickle

    from fulmen.checkpoint.io import CheckpointFileError
    from fulmen.report import write_report

    try:
        page = write_report(args.run_dirs, args.out)
    except (FileNotFoundError, NotADirectoryError, ValueError, CheckpointFileError, pickle.UnpicklingError) as err:
        message = str(err)
        print(message if message.startswith("fulmen report:") else f"fulmen report: {message}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(page)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``fulmen report RUN_DIR [RUN_DIR ...] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="fulmen report",
        description="Draw the curves, learning rate, epoch times and (for classifiers) the confusion matrix and "
        "highest-loss examples of one run or several overlaid, into a self-contained HTML page with PNGs.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
