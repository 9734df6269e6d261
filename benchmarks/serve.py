"""Serving throughput: `roberta serve` with dynamic batching against one request at a time.

One run starts the server twice on the same model, as a user would (`roberta serve` in a
subprocess, on a free local port): first with `--batch-size 1 --max-wait-ms 0` (each request its
own forward pass), then with the defaults (`--batch-size 32 --max-wait-ms 5`: requests that
arrive together share one). Each time, `--concurrency` clients (asyncio + httpx, in this process)
send `--requests` requests of one SST-2 dev sentence each (a fixed, shuffled order), after a
warm-up. It prints requests per second, latency percentiles, the texts per forward pass the
server reports (`GET /info`), and the ratio.

    python benchmarks/serve.py                      # the built-in model, task embed: ~1 minute
    python benchmarks/serve.py --model runs/sst2/best --task classify --concurrency 64

Clients and server share this machine's cores, so absolute numbers are low on 2 cores; both
settings pay the same. Needs the serve extra (FastAPI, uvicorn) and httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ROBERTA_DATA") or ROOT.parent / "shared" / "data")


def sentences(n: int) -> list[str]:
    """n SST-2 dev sentences (repeated if needed) in a fixed shuffled order."""
    path = DATA / "sst2" / "dev.tsv"
    if not path.exists():
        sys.exit(f"benchmarks/serve.py: {path} is absent (set ROBERTA_DATA to the data folder)")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # sentence \t label
    texts = [line.split("\t")[0] for line in lines if line.strip()]
    random.Random(0).shuffle(texts)
    return [texts[i % len(texts)] for i in range(n)]


def body(task: str, text: str) -> dict:
    if task == "qa":
        return {"question": "What is it about?", "context": text}
    if task == "fill-mask":
        words = text.split()
        words[len(words) // 2] = "<mask>"
        return {"inputs": " ".join(words)}
    return {"inputs": text}


def start_server(args, batch_size: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "roberta.cli", "serve", "--model", args.model, "--port", str(port)]
    cmd += ["--batch-size", str(batch_size), "--max-wait-ms", str(max_wait_ms), "--device", "cpu"]
    if args.task:
        cmd += ["--task", args.task]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return server, f"http://127.0.0.1:{port}"


async def wait_until_up(url: str, server: subprocess.Popen, client) -> dict:
    for _ in range(1200):
        if server.poll() is not None:
            sys.exit(f"the server stopped:\n{server.stderr.read().decode()}")
        try:
            return (await client.get(f"{url}/info")).json()
        except Exception:  # not listening yet
            await asyncio.sleep(0.1)
    sys.exit("the server did not start within 2 minutes")


async def drive(url: str, server: subprocess.Popen, texts: list[str], args) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        task = (await wait_until_up(url, server, client))["task"]
        path = f"{url}/{task}"
        gate = asyncio.Semaphore(args.concurrency)
        latencies: list[float] = []

        async def one(text: str) -> None:
            async with gate:
                start = time.perf_counter()
                reply = await client.post(path, json=body(task, text))
                reply.raise_for_status()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one(t) for t in texts[: args.concurrency]))  # warm-up
        before = (await client.get(f"{url}/info")).json()["stats"]
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        wall = time.perf_counter() - start
        after = (await client.get(f"{url}/info")).json()["stats"]
    ms = 1000 * np.array(latencies)
    batches = after["batches"] - before["batches"]
    return {
        "task": task,
        "requests_per_s": len(texts) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "texts_per_batch": (after["texts"] - before["texts"]) / batches,
    }


def measure(args, batch_size: int, max_wait_ms: float, texts: list[str]) -> dict:
    server, url = start_server(args, batch_size, max_wait_ms)
    try:
        return asyncio.run(drive(url, server, texts, args))
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="roberta-small-books", help="default: the built-in model")
    p.add_argument("--task", default="embed", help="default: embed (any checkpoint's encoder)")
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=32, help="clients sending at once (default: 32)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    texts = sentences(args.requests)
    settings = {"one at a time": (1, 0.0), "dynamic batching": (32, 5.0)}
    results = {name: measure(args, *setting, texts) for name, setting in settings.items()}
    print(
        f"{args.model}, task {results['dynamic batching']['task']}, {args.requests} requests of one text, "
        f"{args.concurrency} concurrent clients, {os.cpu_count()} CPUs (shared by clients and server)"
    )
    print(f"{'':28}{'one at a time':>16}{'dynamic batching':>18}{'ratio':>8}")
    rows = [
        ("requests/s", "requests_per_s", False),
        ("latency p50, ms", "p50_ms", True),
        ("latency p95, ms", "p95_ms", True),
        ("texts per forward pass", "texts_per_batch", None),
    ]
    one, dyn = results["one at a time"], results["dynamic batching"]
    for label, key, lower_is_better in rows:
        ratio = (
            ""
            if lower_is_better is None
            else (f"{one[key] / dyn[key]:.2f}x" if lower_is_better else f"{dyn[key] / one[key]:.2f}x")
        )
        print(f"{label:28}{one[key]:>16,.1f}{dyn[key]:>18,.1f}{ratio:>8}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
