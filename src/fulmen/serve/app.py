"""The HTTP app of ``fulmen serve`` (FastAPI): ``POST /predict``, ``GET /health``, ``GET /metadata``.

- ``POST /predict``: a JSON request (``fulmen.serve.codec``) in, ``{"outputs": ...}`` out. A body
  that is not JSON, or inputs of the wrong names, dtype or shape: HTTP 400 with ``{"detail":
  "<what was expected, what came>"}``; a body over ``max_request_bytes`` or more rows than
  ``max_request_rows``: 413. Either way the server goes on serving. A model that fails: 500.
- ``GET /health``: ``{"status": "ok", "model": ..., "batching": {...}, "stats": {...}}``, the
  batcher's counters (requests, batches run, rows, largest batch) included.
- ``GET /metadata``: the model card, as written beside the exported file (for a checkpoint
  served directly: what is known of it).
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations
# (``request: Request``), and Request is imported inside create_app.

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fulmen.serve.batching import Batcher
from fulmen.serve.codec import RequestError, decode_request, encode_outputs
from fulmen.serve.models import ServedModel, output_names


@dataclass(frozen=True)
class Limits:
    """Batching and request-size limits (the ``fulmen serve`` flags)."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_request_rows: int = 1024
    max_request_bytes: int = 64 * 1024 * 1024


def create_app(model: ServedModel, limits: Limits | None = None) -> Any:
    """The FastAPI app serving ``model`` (the batcher starts with the app's lifespan)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    limits = limits or Limits()
    batcher = Batcher(model.run, limits.max_batch_size, limits.max_wait_ms, batchable=model.batchable)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="fulmen serve", lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, message: str) -> Any:
        return JSONResponse(status_code=status, content={"detail": message})

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        try:
            body = await _read_json(request, limits.max_request_bytes)
            answer = await _answer(model, batcher, body, limits)
        except RequestError as err:
            return error(413 if err.too_large else 400, str(err))
        except Exception as err:
            return error(500, f"the model failed on this batch: {type(err).__name__}: {err}")
        return JSONResponse(answer)

    @app.get("/health")
    async def health() -> Any:
        return {
            "status": "ok",
            "model": {"file": model.path, "format": model.kind},
            "batching": {"max_batch_size": limits.max_batch_size, "max_wait_ms": limits.max_wait_ms,
                         "enabled": model.batchable},
            "stats": batcher.stats.as_dict(),
        }

    @app.get("/metadata")
    async def metadata() -> Any:
        return model.card

    return app


async def _read_json(request: Any, max_bytes: int) -> Any:
    """The request body as JSON; 413 before reading a body its Content-Length says is too large."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"the request body has {declared} bytes, the server takes at most {max_bytes} "
                           f"(--max-request-bytes)", too_large=True)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise RequestError(f"the request body is over {max_bytes} bytes (--max-request-bytes)", too_large=True)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON: {err}") from None


async def _answer(model: ServedModel, batcher: Batcher, body: Any, limits: Limits) -> Any:
    if model.preprocess is not None:
        if not isinstance(body, dict) or "inputs" not in body:
            raise RequestError('expected a JSON object {"inputs": ...}')
        try:
            arrays = model.preprocess(body["inputs"])
        except Exception as err:  # the system's own check of what a request means
            raise RequestError(f"serve_preprocess refused the inputs: {type(err).__name__}: {err}") from None
        b64 = body.get("encoding") == "b64"
        if arrays and arrays[0].ndim and arrays[0].shape[0] > limits.max_request_rows:
            raise RequestError(f"the request has {arrays[0].shape[0]} rows, the server takes at most "
                               f"{limits.max_request_rows} (--max-request-rows)", too_large=True)
    else:
        arrays, b64 = decode_request(body, model.inputs, limits.max_request_rows)
    outputs, structure = await batcher.submit(arrays)
    if model.postprocess is not None:
        return {"outputs": model.postprocess(outputs, structure)}
    return encode_outputs(outputs, output_names(model, structure, len(outputs)), b64)
