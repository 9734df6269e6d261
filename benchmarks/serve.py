"""Serving under load: `roberta serve`'s dynamic batching against one request per forward pass, a
mixed-task load test checked against the Python API, and a saturation test that must get 429s.

Every server is `roberta serve` in a subprocess on a free local port (loopback only), as a user
starts it; the clients are asyncio + httpx in this process, so clients and server share this
machine's cores. Three phases, each bounded in requests and seconds:

1. Batching (`--concurrency` clients, `--requests` one-sentence POST /embed): one request per
   forward pass (`--max-batch-requests 1 --max-wait-ms 0 --batch-size 1`) against the defaults
   (token-budget batching, --max-batch-tokens 16384). Requests/s, p50/p95 latency, texts per pass.
2. Load (`--load-clients` clients, `--load-requests` requests): the built-in model served twice,
   `--model fm=... --task fill-mask --model emb=... --task embed`, and a mix of /fill-mask, /embed,
   /v1/embeddings, /similarity and /tokenize with 1 to 6 SST-2 sentences per text (long ones sent
   with `truncate: true`). Requests/s, p50/p99, errors, and every answer compared with what the
   Python API gives for that request alone (floats within 1e-4): lost and mismatched must be 0.
3. Saturation (`--flood-clients` clients against `--max-concurrent-requests 64`): every reply
   must be 200 or 429 (no 5xx, no timeout) and the server must still answer /health after.

The server's peak RSS (VmHWM) is read from /proc at the end of each phase.

    python benchmarks/serve.py                     # all three phases: ~3 minutes on 2 cores
    python benchmarks/serve.py --requests 128 --load-requests 256 --flood-clients 128   # quick

The peer a Python user would pick, infinity-emb, is not run: see PEER below. Needs the serve
extra (FastAPI, uvicorn, prometheus_client) and httpx.
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
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ROBERTA_DATA") or ROOT.parent / "shared" / "data")
PEER = (
    "infinity-emb 0.0.78 not run: it would not pull another torch (torch>=2.2.1 is met), but its "
    "requirements (numpy<2, transformers<=5.0, uvicorn<0.33, click<8.2, rich<14, typer<0.13, "
    "sentence-transformers<4) would downgrade numpy 2.4.6, transformers 5.24, uvicorn 0.54, "
    "tokenizers and huggingface_hub in this environment, which the library and its tests use"
)


def sentences() -> list[str]:
    """The SST-2 dev sentences in a fixed shuffled order."""
    path = DATA / "sst2" / "dev.tsv"
    if not path.exists():
        sys.exit(f"benchmarks/serve.py: {path} is absent (set ROBERTA_DATA to the data folder)")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # sentence \t label
    texts = [line.split("\t")[0].strip() for line in lines if line.strip()]
    random.Random(0).shuffle(texts)
    return texts


# ---- the servers -----------------------------------------------------------------------------------


def start_server(args, *flags: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "roberta.cli", "serve", "--port", str(port), "--device", "cpu", *flags]
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


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB; nan where /proc is absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()


def percentiles(latencies: list[float]) -> dict:
    ms = 1000 * np.array(latencies or [float("nan")])
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}


# ---- phase 1: batching against one request per pass -----------------------------------------------


async def drive_embed(url: str, server, texts: list[str], concurrency: int) -> dict:
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=120) as client:
        await wait_until_up(url, server, client)
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []

        async def one(text: str) -> None:
            async with gate:
                start = time.perf_counter()
                reply = await client.post(f"{url}/embed", json={"inputs": text, "model": "emb"})
                reply.raise_for_status()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one(t) for t in texts[:concurrency]))  # warm-up
        before = (await client.get(f"{url}/info")).json()["models"]
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        wall = time.perf_counter() - start
        after = (await client.get(f"{url}/info")).json()["models"]
    stats = {m["name"]: m["stats"] for m in after}["emb"]
    stats0 = {m["name"]: m["stats"] for m in before}["emb"]
    batches = stats["batches"] - stats0["batches"]
    return {
        "requests_per_s": len(texts) / wall,
        **percentiles(latencies),
        "texts_per_batch": (stats["texts"] - stats0["texts"]) / batches,
    }


# ---- phase 2: the mixed load test ------------------------------------------------------------------


def load_bodies(texts: list[str], n: int, seed: int = 0) -> list[tuple[str, dict]]:
    """n (path, body) of mixed tasks and lengths (1 to 6 sentences per text)."""
    rng = random.Random(seed)

    def text(k: int | None = None) -> str:
        k = k or rng.choice([1, 1, 1, 2, 3, 6])
        return " ".join(rng.choice(texts) for _ in range(k))

    bodies = []
    for _ in range(n):
        kind = rng.choice(["embed", "embed", "fill-mask", "fill-mask", "v1", "similarity", "tokenize"])
        if kind == "embed":
            inputs = text() if rng.random() < 0.7 else [text() for _ in range(rng.randint(2, 4))]
            bodies.append(("/embed", {"inputs": inputs, "truncate": True, "model": "emb"}))
        elif kind == "fill-mask":
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = "<mask>"  # in the first sentence: within the 128 read
            masked = " ".join(words) + " " + text()
            bodies.append(("/fill-mask", {"inputs": masked, "top_k": rng.choice([1, 5]), "truncate": True}))
        elif kind == "v1":
            bodies.append(
                ("/v1/embeddings", {"input": [text(1) for _ in range(rng.randint(1, 3))], "model": "emb"})
            )
        elif kind == "similarity":
            inputs = {"source_sentence": text(1), "sentences": [text(1) for _ in range(3)]}
            bodies.append(("/similarity", {"inputs": inputs, "model": "emb"}))
        else:
            bodies.append(("/tokenize", {"inputs": text(), "model": "emb"}))
    return bodies


def python_api(model: str):
    """(path, body) -> what the Python API answers for that request alone."""
    from roberta.tasks import Embedder, FillMask

    embedder = Embedder.from_pretrained(model, device="cpu")
    filler = FillMask.from_pretrained(model, device="cpu")

    def answer(path: str, body: dict):
        with warnings.catch_warnings():  # long texts are truncated, as the requests ask
            warnings.simplefilter("ignore")
            if path == "/embed":
                return {"outputs": embedder.embed(body["inputs"]).tolist()}
            if path == "/fill-mask":
                return {"outputs": filler.fill_mask(body["inputs"], top_k=body["top_k"])}
            if path == "/v1/embeddings":
                return embedder.embed(body["input"]).tolist()
            if path == "/similarity":
                v = embedder.embed([body["inputs"]["source_sentence"], *body["inputs"]["sentences"]])
                return (v[1:] @ v[0]).tolist()
        from roberta.serve import simple_tokens

        return simple_tokens(embedder.tokenizer, [body["inputs"]], True)

    return answer


def close_to(a, b, tol: float = 1e-4) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close_to(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close_to(x, y, tol) for x, y in zip(a, b))
    return a == b


def comparable(path: str, reply: dict):
    """The part of a reply the Python API gives (the embeddings of an OpenAI reply)."""
    return [d["embedding"] for d in reply["data"]] if path == "/v1/embeddings" else reply


async def drive_mixed(url: str, server, bodies: list, clients: int, timeout: float) -> dict:
    """Send `bodies` from `clients` concurrent clients; returns the replies (or the exception)."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await wait_until_up(url, server, client)
        queue = list(enumerate(bodies))
        replies: list = [None] * len(bodies)
        latencies: list[float] = []

        async def worker() -> None:
            while queue:
                i, (path, body) = queue.pop()
                start = time.perf_counter()
                try:
                    reply = await client.post(f"{url}{path}", json=body)
                    replies[i] = (reply.status_code, reply.json())
                except Exception as e:  # a timeout, a dropped connection
                    replies[i] = (None, f"{type(e).__name__}: {e}")
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
        try:
            alive = (await client.get(f"{url}/health", timeout=30)).status_code == 200
        except Exception:
            alive = False
    return {"replies": replies, "wall": wall, "latencies": latencies, "alive": alive}


def check(bodies: list, replies: list, answer) -> dict:
    """Counts of the replies by status, and how many 200s differ from the Python API."""
    statuses: dict[str, int] = {}
    mismatched, first_mismatch = 0, None
    for (path, body), (status, reply) in zip(bodies, replies):
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200 and not close_to(
            comparable(path, reply), json.loads(json.dumps(answer(path, body)))
        ):
            mismatched += 1
            first_mismatch = first_mismatch or (path, body)
    return {"statuses": statuses, "mismatched": mismatched, "first_mismatch": first_mismatch}


# ---- main --------------------------------------------------------------------------------------------


def run_phase(args, flags: list[str], drive) -> tuple[dict, float]:
    start = time.perf_counter()
    server, url = start_server(args, *flags)
    try:
        result = asyncio.run(drive(url, server))
        return result, peak_rss_mib(server.pid)
    finally:
        stop(server)
        print(f"  roberta serve {' '.join(flags)}: {time.perf_counter() - start:.0f} s", file=sys.stderr)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="roberta-small-books", help="default: the built-in model")
    p.add_argument("--requests", type=int, default=512, help="phase 1 requests (default: 512)")
    p.add_argument("--concurrency", type=int, default=32, help="phase 1 clients (default: 32)")
    p.add_argument("--load-requests", type=int, default=1024, help="phase 2 requests (default: 1024)")
    p.add_argument("--load-clients", type=int, default=64, help="phase 2 clients (default: 64)")
    p.add_argument("--flood-clients", type=int, default=256, help="phase 3 clients (default: 256)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    texts = sentences()
    one_text = [texts[i % len(texts)] for i in range(args.requests)]
    two = [
        "--model",
        f"fm={args.model}",
        "--task",
        "fill-mask",
        "--model",
        f"emb={args.model}",
        "--task",
        "embed",
    ]
    emb = ["--model", f"emb={args.model}", "--task", "embed"]
    one_at_a_time = emb + ["--max-batch-requests", "1", "--max-wait-ms", "0", "--batch-size", "1"]
    results: dict = {}
    results["one at a time"], rss_one = run_phase(
        args, one_at_a_time, lambda url, s: drive_embed(url, s, one_text, args.concurrency)
    )

    load = load_bodies(texts, args.load_requests)
    flood = load_bodies(texts, 4 * args.flood_clients, seed=1)

    async def batching_then_load(url, server):
        batching = await drive_embed(url, server, one_text, args.concurrency)
        return batching, await drive_mixed(url, server, load, args.load_clients, timeout=120)

    (results["dynamic batching"], mixed), rss_load = run_phase(args, two, batching_then_load)
    saturated, rss_flood = run_phase(
        args,
        two + ["--max-concurrent-requests", "64"],
        lambda url, s: drive_mixed(url, s, flood, args.flood_clients, timeout=30),
    )
    start, answer = time.perf_counter(), python_api(args.model)
    checked = {
        "load": check(load, mixed["replies"], answer),
        "flood": check(flood, saturated["replies"], answer),
    }
    print(f"  the Python API on every request: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    report(args, results, mixed, saturated, checked, (rss_one, rss_load, rss_flood))
    if args.json:
        mixed_out = {k: v for k, v in mixed.items() if k != "replies"}
        flood_out = {k: v for k, v in saturated.items() if k != "replies"}
        args.json.write_text(
            json.dumps({**results, "load": mixed_out, "flood": flood_out, **checked}, indent=2)
        )


def report(args, results: dict, mixed: dict, flood: dict, checked: dict, rss: tuple) -> None:
    print(f"{args.model}, {os.cpu_count()} CPUs (shared by clients and server), loopback")
    print(f"\n1. batching: {args.requests} one-sentence POST /embed, {args.concurrency} concurrent clients")
    print(f"{'':28}{'one at a time':>16}{'dynamic batching':>18}{'ratio':>8}")
    one, dyn = results["one at a time"], results["dynamic batching"]
    for label, key, lower in [
        ("requests/s", "requests_per_s", False),
        ("latency p50, ms", "p50_ms", True),
        ("latency p95, ms", "p95_ms", True),
        ("texts per forward pass", "texts_per_batch", None),
    ]:
        ratio = "" if lower is None else f"{(one[key] / dyn[key]) if lower else (dyn[key] / one[key]):.2f}x"
        print(f"{label:28}{one[key]:>16,.1f}{dyn[key]:>18,.1f}{ratio:>8}")

    load, lat = checked["load"], percentiles(mixed["latencies"])
    n = len(mixed["replies"])
    errors, lost = n - load["statuses"].get("200", 0), load["statuses"].get("None", 0)
    print(
        f"\n2. load: {n} requests, {args.load_clients} concurrent clients, mixed /fill-mask /embed "
        "/v1/embeddings /similarity /tokenize, 1-6 sentences per text"
    )
    print(
        f"   requests/s {n / mixed['wall']:,.1f}   latency p50 {lat['p50_ms']:,.0f} ms  p99 {lat['p99_ms']:,.0f} ms"
    )
    print(
        f"   statuses {load['statuses']}   errors {errors}   lost {lost}   mismatched vs the Python API {load['mismatched']}"
    )
    if load["first_mismatch"]:
        print(f"   first mismatch: {load['first_mismatch']}")

    fl = checked["flood"]
    other = {k: v for k, v in fl["statuses"].items() if k not in ("200", "429")}
    print(
        f"\n3. saturation: {len(flood['replies'])} requests, {args.flood_clients} concurrent clients, "
        "--max-concurrent-requests 64"
    )
    print(
        f"   statuses {fl['statuses']}   other than 200/429: {sum(other.values())}   "
        f"mismatched 200s {fl['mismatched']}   alive after: {flood['alive']}"
    )
    print(f"\nserver peak RSS, MiB: phase 1 {rss[0]:,.0f}, phase 1+2 {rss[1]:,.0f}, phase 3 {rss[2]:,.0f}")
    print(f"peer: {PEER}")


if __name__ == "__main__":
    main()
