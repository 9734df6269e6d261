"""The benchmark scripts' command lines: each says how it is used without running, and speed.py
refuses --device cuda at once where there is no GPU. Each script runs as a subprocess, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))
LIMIT_S = 120  # importing torch on a busy machine; a script that runs its benchmark takes minutes


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=LIMIT_S, cwd=BENCHMARKS.parent
    )


def test_every_benchmark_is_found():
    assert {"speed.py", "last_layer.py", "compile.py", "optimizer.py", "serve.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(script):
    result = run(f"benchmarks/{script}", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and script in result.stdout.splitlines()[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("script", ["speed.py", "compile.py"])
def test_cuda_without_a_gpu_is_one_clear_line(script):
    result = run(f"benchmarks/{script}", "--device", "cuda")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert "--device cuda needs a GPU" in result.stderr
