"""Serving under load: `roberta serve`'s dynamic batching against one request per forward pass and
against a peer, infinity-emb, on the same checkpoint; a mixed-task load test checked against the
Python API; and a saturation test that must get 429s.

Every server runs in a subprocess on a free local port (loopback only), as a user starts it; the
clients are asyncio + httpx in this process, so clients and servers share this machine's cores.
Three phases, each bounded in requests and seconds:

1. Embeddings (`--concurrency` clients, `--requests` one-sentence texts per server): three servers
   up at once, each serving one model, the same checkpoint folder: `roberta serve` one request per
   forward pass (`--max-batch-requests 1 --max-wait-ms 0 --batch-size 1`), `roberta serve` with its
   defaults (token-budget batching, --max-batch-tokens 16384, --batch-size 32), both on POST /embed;
   and with `--peer-python`, infinity-emb on its OpenAI-shaped POST /embeddings, set to match
   ours: `--engine torch --device cpu --dtype float32 --pooling-method mean` (the mean over the
   text's tokens, <s> and </s> included, as `Embedder.embed`'s default; infinity normalizes to unit
   length, as ours does by default), `--batch-size 32` (its default and ours). The texts go to one
   server at a time, in `--rounds` rounds whose order alternates (A B P, then P B A), so that other
   work on this shared machine falls on all three alike. Requests/s, p50/p95/p99, errors, texts
   per forward pass (ours: from /info), peak RSS, and every vector against `Embedder.embed` of the
   same texts (max |diff| within 1e-4, or the reply counts as mismatched).
2. Load (`--load-clients` clients, `--load-requests` requests): the built-in model served twice,
   `--model fm=... --task fill-mask --model emb=... --task embed`, and a mix of /fill-mask, /embed,
   /v1/embeddings, /similarity and /tokenize with 1 to 6 SST-2 sentences per text (long ones sent
   with `truncate: true`). Requests/s, p50/p99, errors, and every answer compared with what the
   Python API gives for that request alone (floats within 1e-4): lost and mismatched must be 0.
3. Saturation (`--flood-clients` clients against `--max-concurrent-requests 64`): every reply
   must be 200 or 429 (no 5xx, no timeout) and the server must still answer /health after.

A server's peak RSS (VmHWM) is read from /proc at the end of its phase. The output's header names
the CPU, the load average before and after, and how many cores other work used meanwhile (/proc/stat
less this run's own CPU time): other work on the machine lowers the figures.

    python benchmarks/serve.py --peer-python /work/peer-venv/bin/python   # 2 min on 2 idle cores, ~11 on busy ones
    python benchmarks/serve.py --requests 128 --load-requests 256 --flood-clients 128   # quick, no peer

The peer lives in its own venv: its pins (numpy<2, transformers<=5.0, uvicorn<0.33, click<8.2,
rich<14, typer<0.13, sentence-transformers<4) would downgrade this one. torch goes in first, from
the CPU build that constraints.txt pins (an unpinned torch would pull a multi-GB CUDA build):

    python3 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install -c constraints.txt torch
    /work/peer-venv/bin/pip install -c constraints.txt 'infinity-emb[server,torch]==0.0.78'

It runs offline (HF_HUB_OFFLINE=1, DO_NOT_TRACK=1) from the checkpoint's folder, which
sentence-transformers loads as a plain transformers folder ("Creating a new one with mean
pooling"). Without `--peer-python`, or where infinity_emb does not import with it, the peer is
skipped and the output says why. Needs the serve extra (FastAPI, uvicorn, prometheus_client) and httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ROBERTA_DATA") or ROOT.parent / "shared" / "data")
VECTOR_TOL = 1e-4  # max |diff| of a unit vector against Embedder.embed
START_S = 300  # three servers starting at once on 2 busy cores: minutes, not seconds


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*flags: str) -> tuple[subprocess.Popen, str]:
    """`roberta serve FLAGS` on a free loopback port: (the process, its URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "roberta.cli", "serve", "--port", str(port), "--device", "cpu", *flags]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return server, f"http://127.0.0.1:{port}"


def peer_version(peer_python: str | None) -> tuple[str | None, str]:
    """(infinity-emb's version and its venv's torch, None) or (None, why the peer is not run)."""
    if not peer_python:
        return None, "not run: no --peer-python (the setup is in benchmarks/serve.py's docstring)"
    code = "import infinity_emb, sentence_transformers, torch; print(infinity_emb.__version__, torch.__version__)"
    try:
        found = subprocess.run([peer_python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"not run: {peer_python}: {e}"
    if found.returncode != 0:
        why = (found.stderr.strip().splitlines() or ["no error text"])[-1]
        return None, f"not run: infinity_emb does not import with {peer_python}: {why}"
    version, torch_version = found.stdout.split()
    return f"infinity-emb {version} (torch {torch_version})", ""


def start_peer(peer_python: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """infinity-emb serving `folder` on a free loopback port, set to embed as `Embedder.embed` does."""
    port = free_port()
    cli = "from infinity_emb.cli import cli; cli()"  # the `infinity_emb` script, run by that venv's python
    flags = ["v2", "--model-id", str(folder), "--served-model-name", "emb", "--engine", "torch"]
    flags += ["--device", "cpu", "--dtype", "float32", "--pooling-method", "mean", "--batch-size", "32"]
    flags += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1")
    log = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the server runs
    peer = subprocess.Popen(
        [peer_python, "-c", cli, *flags], cwd=tempfile.gettempdir(), env=env, stdout=log, stderr=log
    )
    peer.stderr = log  # read back by wait_until_up if it stops
    return peer, f"http://127.0.0.1:{port}"


async def wait_until_up(url: str, server: subprocess.Popen, client, path: str = "/info") -> dict:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            if hasattr(server.stderr, "seek"):  # the peer's log file
                server.stderr.seek(0)
            tail = server.stderr.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"the server stopped (exit {server.returncode}):\n{tail}")
        try:
            reply = await client.get(f"{url}{path}")
            if reply.status_code == 200:
                return reply.json()
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not answer {path} within {START_S} s")


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
        server.wait()


def percentiles(latencies: list[float]) -> dict:
    ms = 1000 * np.array(latencies or [float("nan")])
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}


# ---- phase 1: embeddings, batching against one request per pass and against the peer --------------


@dataclass
class Target:
    """One server of phase 1 and how its embedding route is asked and read."""

    name: str
    url: str
    process: subprocess.Popen
    ours: bool  # roberta serve: POST /embed and /info's counters; else the peer's POST /embeddings

    @property
    def route(self) -> str:
        return "/embed" if self.ours else "/embeddings"

    def body(self, text: str) -> dict:
        return {"inputs": text, "model": "emb"} if self.ours else {"input": text, "model": "emb"}

    def vector(self, reply: dict) -> list[float]:
        return reply["outputs"] if self.ours else reply["data"][0]["embedding"]


async def embed_round(client, target: Target, texts: list[str], concurrency: int) -> dict:
    """Each text as one request, `concurrency` at a time: wall time, latencies, vectors, errors."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    vectors: list = [None] * len(texts)

    async def one(i: int, text: str) -> None:
        async with gate:
            start = time.perf_counter()
            try:
                reply = await client.post(f"{target.url}{target.route}", json=target.body(text))
                if reply.status_code == 200:
                    vectors[i] = target.vector(reply.json())
            except Exception:  # a timeout, a dropped connection: counted as an error below
                pass
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    return {"wall": time.perf_counter() - start, "latencies": latencies, "vectors": vectors}


async def texts_and_batches(client, target: Target) -> tuple[int, int]:
    models = (await client.get(f"{target.url}/info")).json()["models"]
    stats = {m["name"]: m["stats"] for m in models}["emb"]
    return stats["texts"], stats["batches"]


async def embed_rounds(targets: list[Target], texts: list[str], concurrency: int, rounds: int) -> dict:
    """Every text to every server, in `rounds` rounds of alternating order; a server that does not
    start is dropped (its name -> why, under "not started")."""
    import httpx

    clients = {
        t.name: httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=120)
        for t in targets
    }
    try:
        up, not_started = [], {}
        for t in targets:
            try:
                await wait_until_up(t.url, t.process, clients[t.name], "/info" if t.ours else "/health")
                up.append(t)
            except RuntimeError as e:
                not_started[t.name] = str(e)
        for t in up:  # warm-up, not timed
            await embed_round(clients[t.name], t, texts[:concurrency], concurrency)
        counts0 = {t.name: await texts_and_batches(clients[t.name], t) for t in up if t.ours}
        runs: dict[str, list[dict]] = {t.name: [] for t in up}
        per_round = -(-len(texts) // rounds)
        for r in range(rounds):
            chunk = texts[r * per_round : (r + 1) * per_round]
            for t in up if r % 2 == 0 else up[::-1]:
                runs[t.name].append(await embed_round(clients[t.name], t, chunk, concurrency))
        counts = {t.name: await texts_and_batches(clients[t.name], t) for t in up if t.ours}
    finally:
        for c in clients.values():
            await c.aclose()
    results = {}
    for t in up:
        vectors = [v for run in runs[t.name] for v in run["vectors"]]
        wall = sum(run["wall"] for run in runs[t.name])
        results[t.name] = {
            "route": t.route,
            "requests_per_s": len(texts) / wall,
            "rounds_requests_per_s": [len(run["vectors"]) / run["wall"] for run in runs[t.name]],
            **percentiles([x for run in runs[t.name] for x in run["latencies"]]),
            "errors": sum(v is None for v in vectors),
            "vectors": vectors,
        }
        if t.ours:
            (n1, b1), (n0, b0) = counts[t.name], counts0[t.name]
            results[t.name]["texts_per_batch"] = (n1 - n0) / max(b1 - b0, 1)
    return {"results": results, "not started": not_started}


def check_vectors(result: dict, reference: np.ndarray) -> None:
    """Adds to `result` the largest |diff| against the reference vectors, the lowest cosine, and how
    many vectors differ by more than VECTOR_TOL (missing ones are errors, counted apart)."""
    got = [(np.asarray(v), ref) for v, ref in zip(result.pop("vectors"), reference) if v is not None]
    diffs = [float(np.abs(v - ref).max()) if v.shape == ref.shape else float("inf") for v, ref in got]
    cosines = [
        float(v @ ref / (np.linalg.norm(v) * np.linalg.norm(ref))) for v, ref in got if v.shape == ref.shape
    ]
    result["max_abs_diff"] = max(diffs, default=float("nan"))
    result["min_cosine"] = min(cosines, default=float("nan"))
    result["mismatched"] = sum(d > VECTOR_TOL for d in diffs)


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

        async def warm(path: str, body: dict) -> None:
            with contextlib.suppress(Exception):
                await client.post(f"{url}{path}", json=body)

        await asyncio.gather(*(warm(*b) for b in bodies[:32]))  # not timed
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
    mismatched, first_mismatch, first_other = 0, None, None
    for (path, body), (status, reply) in zip(bodies, replies):
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status not in (200, 429) and first_other is None:  # None: no reply (the exception)
            first_other = f"{path} -> {status}: {str(reply)[:300]}"
        if status == 200 and not close_to(
            comparable(path, reply), json.loads(json.dumps(answer(path, body)))
        ):
            mismatched += 1
            first_mismatch = first_mismatch or (path, body)
    return {
        "statuses": statuses,
        "mismatched": mismatched,
        "first_mismatch": first_mismatch,
        "first_other": first_other,
    }


# ---- the machine ---------------------------------------------------------------------------------

CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")
CPU_FLAGS += ("amx_tile", "amx_bf16", "amx_int8")


def cpu_name_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name (as lscpu prints it) and which of CPU_FLAGS it has."""
    name, flags = "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    return name, [f for f in CPU_FLAGS if f in flags]


def busy_cpu_s() -> float:
    """CPU seconds that every process on this machine has used since boot (/proc/stat)."""
    with contextlib.suppress(OSError, ValueError):
        user, nice, system, _idle, _iowait, irq, softirq = map(
            int, Path("/proc/stat").read_text().split()[1:8]
        )
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (the servers, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---- main --------------------------------------------------------------------------------------------


def run_phase(flags: list[str], drive) -> tuple[dict, float]:
    start = time.perf_counter()
    server, url = start_server(*flags)
    try:
        result = asyncio.run(drive(url, server))
        return result, peak_rss_mib(server.pid)
    except RuntimeError as e:  # the server did not start
        sys.exit(f"benchmarks/serve.py: roberta serve {' '.join(flags)}: {e}")
    finally:
        stop(server)
        print(f"  roberta serve {' '.join(flags)}: {time.perf_counter() - start:.0f} s", file=sys.stderr)


def phase_embeddings(args, folder: Path, texts: list[str], peer: str | None) -> dict:
    """Phase 1: our two servers and, where `peer`, infinity-emb, up at once and driven in turns."""
    start = time.perf_counter()
    emb = ["--model", f"emb={folder}", "--task", "embed"]
    one = ["--max-batch-requests", "1", "--max-wait-ms", "0", "--batch-size", "1"]
    process, url = start_server(*emb, *one)
    targets = [Target("one at a time", url, process, ours=True)]
    process, url = start_server(*emb)
    targets.append(Target("dynamic batching", url, process, ours=True))
    if peer:
        process, url = start_peer(args.peer_python, folder)
        targets.append(Target("infinity-emb", url, process, ours=False))
    try:
        out = asyncio.run(embed_rounds(targets, texts, args.concurrency, args.rounds))
        for t in targets:
            if t.name in out["results"]:
                out["results"][t.name]["peak_rss_mib"] = peak_rss_mib(t.process.pid)
    finally:
        for t in targets:
            stop(t.process)
        print(f"  phase 1, {len(targets)} servers: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for name, why in out["not started"].items():
        if name != "infinity-emb":
            sys.exit(f"benchmarks/serve.py: roberta serve ({name}): {why}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="roberta-small-books", help="default: the built-in model")
    p.add_argument("--requests", type=int, default=512, help="phase 1 texts per server (default: 512)")
    p.add_argument("--concurrency", type=int, default=32, help="phase 1 clients (default: 32)")
    p.add_argument("--rounds", type=int, default=4, help="phase 1 rounds, order alternating (default: 4)")
    p.add_argument(
        "--peer-python",
        help="the python of a venv with infinity-emb (see the docstring); without it the peer is skipped",
    )
    p.add_argument("--load-requests", type=int, default=1024, help="phase 2 requests (default: 1024)")
    p.add_argument("--load-clients", type=int, default=64, help="phase 2 clients (default: 64)")
    p.add_argument("--flood-clients", type=int, default=256, help="phase 3 clients (default: 256)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    import torch

    from roberta.hub import MODEL_FILES, resolve
    from roberta.tasks import Embedder

    cpu, flags = cpu_name_and_flags()
    machine = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "flags": flags,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_before": os.getloadavg(),
    }
    busy0, own0, wall0 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
    folder = resolve(args.model, MODEL_FILES)  # one folder, loaded by both servers
    texts = sentences()
    one_text = [texts[i % len(texts)] for i in range(args.requests)]
    peer, peer_note = peer_version(args.peer_python)

    embeddings = phase_embeddings(args, folder, one_text, peer)
    results = embeddings["results"]
    if "infinity-emb" in embeddings["not started"]:
        peer, peer_note = None, f"did not start: {embeddings['not started']['infinity-emb']}"

    two = ["--model", f"fm={folder}", "--task", "fill-mask", "--model", f"emb={folder}", "--task", "embed"]
    load = load_bodies(texts, args.load_requests)
    flood = load_bodies(texts, 4 * args.flood_clients, seed=1)
    mixed, rss_load = run_phase(two, lambda url, s: drive_mixed(url, s, load, args.load_clients, timeout=120))
    saturated, rss_flood = run_phase(
        two + ["--max-concurrent-requests", "64"],
        lambda url, s: drive_mixed(url, s, flood, args.flood_clients, timeout=30),
    )
    start, answer = time.perf_counter(), python_api(str(folder))
    reference = Embedder.from_pretrained(folder, device="cpu").embed(one_text, pooling="mean", normalize=True)
    for result in results.values():
        check_vectors(result, reference.numpy())
    checked = {
        "load": check(load, mixed["replies"], answer),
        "flood": check(flood, saturated["replies"], answer),
    }
    print(f"  the Python API on every request: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    wall = time.perf_counter() - wall0
    machine["loadavg_after"] = os.getloadavg()
    machine["wall_s"] = wall
    machine["others_cores"] = max(0.0, (busy_cpu_s() - busy0) - (own_cpu_s() - own0)) / wall
    rss = {"load": rss_load, "flood": rss_flood}
    report(args, machine, results, peer or peer_note, mixed, saturated, checked, rss)
    if args.json:
        mixed_out, flood_out = summary(mixed), summary(saturated)
        out = {"machine": machine, "peer": peer or peer_note, **results}
        out.update(load=mixed_out, flood=flood_out, checked=checked, peak_rss_mib=rss)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def summary(driven: dict) -> dict:
    """A phase-2 or phase-3 run without its replies and raw latencies: wall, alive, percentiles."""
    return {"wall": driven["wall"], "alive": driven["alive"], **percentiles(driven["latencies"])}


def report_machine(args, machine: dict) -> None:
    before, after = machine["loadavg_before"], machine["loadavg_after"]
    print(f"{args.model}, loopback; clients and servers share the machine's {machine['cpus']} CPUs")
    print(
        f"CPU: {machine['cpu']}; flags {' '.join(machine['flags'])}; torch {machine['torch']}, "
        f"cpu capability {machine['cpu_capability']}"
    )
    print(
        f"load average (1/5/15 min) before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
        f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}; other work used "
        f"{machine['others_cores']:.2f} of the {machine['cpus']} cores over the run's {machine['wall_s']:.0f} s"
    )
    if machine["others_cores"] > 0.25 or before[0] > 0.5 * machine["cpus"]:
        print(
            "the machine was SHARED with other work during this run: figures are lower and noisier than idle"
        )


def report_embeddings(args, results: dict, peer: str) -> None:
    names = [n for n in ("one at a time", "dynamic batching", "infinity-emb") if n in results]
    heads = {
        "one at a time": "ours, one/pass",
        "dynamic batching": "ours, batching",
        "infinity-emb": "infinity-emb",
    }
    one, dyn, inf = (results.get(n) for n in ("one at a time", "dynamic batching", "infinity-emb"))
    print(
        f"\n1. embeddings: {args.requests} one-sentence texts per server, {args.concurrency} concurrent "
        f"clients, {args.rounds} rounds in alternating order"
    )
    ratios = ["batching/one"] + (["batching/inf"] if inf else [])
    print(f"{'':24}" + "".join(f"{heads[n]:>17}" for n in names) + "".join(f"{r:>14}" for r in ratios))
    print(f"{'route':24}" + "".join(f"{results[n]['route']:>17}" for n in names))
    rows = [
        ("requests/s", "requests_per_s", False, ",.1f"),
        ("  by round, min-max", "rounds_range", None, "s"),
        ("latency p50, ms", "p50_ms", True, ",.0f"),
        ("latency p95, ms", "p95_ms", True, ",.0f"),
        ("latency p99, ms", "p99_ms", True, ",.0f"),
        ("texts per forward pass", "texts_per_batch", None, ",.1f"),
        ("errors", "errors", None, "d"),
        ("peak RSS, MiB", "peak_rss_mib", None, ",.0f"),
        (f"mismatched (>{VECTOR_TOL:g})", "mismatched", None, "d"),
        ("max |diff| vs Python API", "max_abs_diff", None, ".1e"),
        ("min cosine vs Python API", "min_cosine", None, ".7f"),
    ]
    shown = {n: dict(results[n]) for n in names}
    for n in names:  # the spread over rounds: how much other work on the machine moved the figures
        by_round = results[n]["rounds_requests_per_s"]
        shown[n]["rounds_range"] = f"{min(by_round):,.0f}-{max(by_round):,.0f}"
    for label, key, lower, fmt in rows:
        cells = "".join(
            f"{format(shown[n][key], fmt):>17}" if key in shown[n] else f"{'-':>17}" for n in names
        )
        if lower is None:
            print(f"{label:24}{cells}")
            continue
        pairs = [(dyn, one)] + ([(dyn, inf)] if inf else [])
        ratio = "".join(f"{(b[key] / a[key]) if lower else (a[key] / b[key]):>13.2f}x" for a, b in pairs)
        print(f"{label:24}{cells}{ratio}")
    print(f"peer: {peer}")
    if inf:
        print(
            "  infinity-emb: POST /embeddings, --engine torch --device cpu --dtype float32 --pooling-method "
            "mean --batch-size 32, the same checkpoint folder; ours: POST /embed, mean pooling, unit length"
        )


def report(args, machine, results, peer, mixed, flood, checked, rss) -> None:
    report_machine(args, machine)
    report_embeddings(args, results, peer)

    load, lat = checked["load"], percentiles(mixed["latencies"])
    n = len(mixed["replies"])
    errors, lost = n - load["statuses"].get("200", 0), load["statuses"].get("None", 0)
    print(
        f"\n2. load: {n} requests, {args.load_clients} concurrent clients, mixed /fill-mask /embed "
        "/v1/embeddings /similarity /tokenize, 1-6 sentences per text, two models in one server"
    )
    print(
        f"   requests/s {n / mixed['wall']:,.1f}   latency p50 {lat['p50_ms']:,.0f} ms  p99 {lat['p99_ms']:,.0f} ms"
        f"   peak RSS {rss['load']:,.0f} MiB"
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
        f"mismatched 200s {fl['mismatched']}   alive after: {flood['alive']}   peak RSS {rss['flood']:,.0f} MiB"
    )
    for kind in ("load", "flood"):
        if checked[kind]["first_other"]:
            print(
                f"   first reply other than 200/429 in phase {2 if kind == 'load' else 3}: {checked[kind]['first_other']}"
            )


if __name__ == "__main__":
    main()
