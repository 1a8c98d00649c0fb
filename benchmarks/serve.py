"""``fulmen serve`` against calling the model in-process: requests/s and latency p50/p99.

    .venv/bin/python benchmarks/serve.py [--requests 2000] [--clients 16] [--quick]

The model: an MLP 64-256-256-10 exported with ``torch.export`` (dynamic batch) to ``model.pt2``
with a model card beside it, served by ``python -m fulmen serve`` on 127.0.0.1 (a separate
process). Every request is one row. The model runs on one thread in both (``OMP_NUM_THREADS=1``
for the server, ``torch.set_num_threads(1)`` here). Variants:

- **direct**: the loaded ``.pt2`` module called in this process, one row per call, one caller
  (no HTTP, no JSON): the floor a server is measured against.
- **direct batch 32**: the same module on batches of 32 rows, per row: what batching can reach.
- **http json / http b64**: ``--clients`` concurrent httpx clients (asyncio, keep-alive), each
  sending its share of ``--requests`` one-row requests, with batching on (``--max-batch-size 32
  --max-wait-ms 2``); JSON lists or the base64 tensor encoding.
- **http json, no batching**: the same with ``--max-batch-size 1``.
- **http GET /health**: the same clients asking ``/health``: what the HTTP stack (httpx client,
  uvicorn, FastAPI) costs on this machine with no request body and no model.

Latency is per request as the client sees it (send to parsed answer). The clients and the server
share the machine's cores, so on a small machine the client's own cost is in the numbers. Ratios
are against *direct*: throughput ratio (higher is better) and p50 latency ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def build(folder: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    path = folder / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (torch.randn(4, 64),), dynamic_shapes=({0: batch},)), str(path))
    data = path.read_bytes()
    card = {
        "format": 1,
        "model": {"file": path.name, "format": "pt2", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)},
        "inputs": [{"name": "input", "shape": [None, 64], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": [None, 10], "dtype": "float32"}],
    }
    Path(str(path) + ".json").write_text(json.dumps(card))
    return path, model


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    return {"rps": len(ms) / seconds, "p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def direct(path: Path, rows: np.ndarray, batch: int) -> dict[str, float]:
    module = torch.export.load(str(path)).module()
    x = torch.from_numpy(rows)
    with torch.no_grad():
        for i in range(min(50, len(x))):
            module(x[i : i + batch])
        latencies, t0 = [], time.perf_counter()
        for i in range(0, len(x), batch):
            s = time.perf_counter()
            module(x[i : i + batch]).numpy()
            latencies.extend([time.perf_counter() - s] * len(x[i : i + batch]))
        return summary(latencies, time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fulmen", "serve", str(path), "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def body(row: np.ndarray, encoding: str) -> dict[str, Any]:
    if encoding == "b64":
        return {"inputs": {"dtype": "float32", "shape": [1, row.size], "b64": base64.b64encode(row.astype("<f4").tobytes()).decode()}}
    return {"inputs": [row.tolist()]}


async def clients(url: str, rows: np.ndarray, n_clients: int, encoding: str) -> dict[str, float]:
    import httpx

    bodies = [json.dumps(body(r, encoding)).encode() for r in rows]
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def one(share: list[bytes]) -> None:
            for b in share:
                s = time.perf_counter()
                if encoding == "health":  # the HTTP stack alone: no body, no model
                    r = await client.get("/health")
                else:
                    r = await client.post("/predict", content=b, headers={"content-type": "application/json"})
                r.raise_for_status()
                r.json()
                latencies.append(time.perf_counter() - s)

        await asyncio.gather(*(one(bodies[i :: n_clients][:5]) for i in range(n_clients)))  # warm-up
        latencies.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(bodies[i :: n_clients]) for i in range(n_clients)))
        return summary(latencies, time.perf_counter() - t0)


def served(path: Path, rows: np.ndarray, n_clients: int, encoding: str, *flags: str) -> tuple[dict[str, float], dict[str, Any]]:
    import httpx

    proc, url = start(path, *flags)
    try:
        result = asyncio.run(clients(url, rows, n_clients, encoding))
        stats = httpx.get(url + "/health").json()["stats"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return result, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="300 requests")
    args = parser.parse_args()
    n = 300 if args.quick else args.requests
    torch.set_num_threads(1)  # the server runs with OMP_NUM_THREADS=1 too: one model thread each
    rows = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    results: dict[str, dict[str, float]] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as root:
        path, _ = build(Path(root))
        results["direct"] = direct(path, rows, 1)
        results["direct batch 32 (per row)"] = direct(path, rows, 32)
        batching = ("--max-batch-size", "32", "--max-wait-ms", "2")
        for name, encoding, flags in (
            ("http GET /health (HTTP floor)", "health", batching),
            ("http json", "json", batching),
            ("http b64", "b64", batching),
            ("http json, no batching", "json", ("--max-batch-size", "1")),
        ):
            results[name], stats = served(path, rows, args.clients, encoding, *flags)
            if encoding != "health":
                notes[name] = f"{stats['requests']} requests in {stats['batches']} batches (largest {stats['largest_batch_rows']} rows)"
    base = results["direct"]
    print(f"# fulmen serve: {n} one-row requests, {args.clients} concurrent clients, MLP 64-256-256-10 (.pt2), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 model thread\n")
    print("| variant | requests/s | p50 ms | p99 ms | throughput ratio | p50 ratio | batches |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['rps'] / base['rps']:.3f} | "
              f"{r['p50'] / base['p50']:.1f} | {notes.get(name, '')} |")


if __name__ == "__main__":
    main()
