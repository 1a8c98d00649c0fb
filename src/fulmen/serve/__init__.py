"""``fulmen serve MODEL``: an HTTP server (FastAPI + uvicorn) for an exported model or a checkpoint.

MODEL is a ``.pt2`` program or an ``.onnx`` graph written by ``fulmen export`` (its model card
``MODEL.json`` must match the file, or the server does not start), or a checkpoint served through
its system's ``predict_step``. Concurrent requests are batched (``fulmen.serve.batching``); the
request format is in ``fulmen.serve.codec``; the routes in ``fulmen.serve.app``. See
``docs/deploy.md``.

FastAPI and uvicorn (the ``serve`` extra) are imported only when a server starts.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_arguments", "main", "serve"]


def add_arguments(parser: Any) -> None:
    """The ``fulmen serve`` options."""
    parser.add_argument("model", metavar="MODEL", help="a .pt2 or .onnx file from `fulmen export` (with its card MODEL.json), or a checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    parser.add_argument("--max-batch-size", type=int, default=32, metavar="ROWS", help="most rows run in one batch (default: 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS", help="longest a request waits for others to batch with (default: 5)")
    parser.add_argument("--max-request-rows", type=int, default=1024, metavar="ROWS", help="larger requests get HTTP 413 (default: 1024)")
    parser.add_argument("--max-request-bytes", type=int, default=64 * 1024 * 1024, metavar="BYTES", help="larger bodies get HTTP 413 (default: 64 MiB)")
    parser.add_argument("--system", metavar="package.module:Class", help="a checkpoint's fulmen.System class (default: the one its run.json names)")
    parser.add_argument("--no-card", action="store_true", help="serve a .pt2/.onnx file without a model card (nothing is checked)")


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8000, system: str | None = None,
          require_card: bool = True, **limits: Any) -> None:
    """Load ``model_path`` and serve it until interrupted (raises ``ModelCardError``/``ServeLoadError``)."""
    from fulmen.serve.app import Limits, create_app
    from fulmen.serve.models import load_model

    try:
        import uvicorn
    except ImportError:
        raise ImportError("fulmen serve needs FastAPI and uvicorn: pip install 'fulmen[serve]'") from None
    model = load_model(model_path, system=system, require_card=require_card)
    app = create_app(model, Limits(**limits))
    sha = str(model.card.get("model", {}).get("sha256", ""))[:12]
    print(f"fulmen serve: {model_path} ({model.kind}, sha256 {sha or 'unchecked'}) on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(args: argparse.Namespace) -> int:
    """``fulmen serve``: exit 1 when the model cannot be served (card mismatch, bad file), 2 for bad flags."""
    from fulmen.serve.models import ModelCardError, ServeLoadError

    for flag in ("max_batch_size", "max_request_rows", "max_request_bytes"):
        if getattr(args, flag) < 1:
            print(f"fulmen serve: --{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}", file=sys.stderr)
            return 2
    if not args.max_wait_ms >= 0:
        print(f"fulmen serve: --max-wait-ms must be 0 or more, got {args.max_wait_ms}", file=sys.stderr)
        return 2
    try:
        serve(
            args.model, host=args.host, port=args.port, system=args.system, require_card=not args.no_card,
            max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
            max_request_rows=args.max_request_rows, max_request_bytes=args.max_request_bytes,
        )
    except (ModelCardError, ServeLoadError, ImportError) as err:
        print(f"fulmen serve: refusing to start: {err}", file=sys.stderr)
        return 1
    return 0
