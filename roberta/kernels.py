"""Fused CPU kernels, compiled for the running CPU on first use: int8 inference's per-row quantization.

    ops = int8_ops()        # torch.ops.roberta once built here, or None where it cannot be
    ops.quantize_rows(x, u8)                    # what quantize.quantize_rows computes
    ops.quantize_rows_above(x, floor, step)     # what quantize.quantize_rows_above computes

Why. int8 inference quantizes every input row of every layer's matmuls (roberta/quantize.py). In
torch's ops that is an absmax, a division, a rounding and a cast, each a pass over the whole
(tokens, features) tensor: on roberta-base's FFN the passes took longer than its int8 GEMM
(`python benchmarks/profile_a.py --dtype int8 --workload B`). `csrc/int8.cpp` does the same
arithmetic a row at a time while the row is in cache, with the CPU's vector instructions
(AVX-512 or AVX2), on torch's threads: one read of the input, one write of the codes. Its results
equal the torch-op formulas bit for bit (tests/test_kernels.py), and those formulas stay the path
wherever the kernels are not built.

How. `torch.utils.cpp_extension.load` builds `csrc/int8.cpp` with the system's C++ compiler,
`-march=native`, once per CPU, source and torch version (about half a minute), into
$ROBERTA_KERNELS_DIR (default ~/.cache/roberta/kernels); later processes load the cached library.
It needs a C++ compiler and ninja (`pip install ninja` puts one beside Python). Where either is
missing, the build fails, or the CPU has neither AVX-512 nor AVX2, `int8_ops()` is None (the reason
in `unavailable_reason()`) and int8 runs on torch's ops as before, with the same numbers.
ROBERTA_KERNELS=0 turns the kernels off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
import sysconfig
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "int8.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp"]  # OpenMP: at::parallel_for runs on torch's threads
FAST_ISAS = ("avx512", "avx2")  # the vector builds; a scalar one would be slower than torch's ops

_lock = threading.Lock()
_loaded: list = []  # [the answer] once asked
_why_not: str | None = None


@functools.cache
def cpu_features() -> frozenset[str]:
    """The running CPU's feature flags (Linux /proc/cpuinfo: avx2, avx512_vnni, amx_bf16, ...);
    empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def build_name(flags: list[str]) -> str:
    """The build's name: one per source, flags, torch version and CPU (`-march=native` code)."""
    key = "\n".join([SOURCE.read_text(), torch.__version__, " ".join(flags), *sorted(cpu_features())])
    return "roberta_int8_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def build_root() -> Path:
    return Path(os.environ.get("ROBERTA_KERNELS_DIR") or Path.home() / ".cache" / "roberta" / "kernels")


def missing_tools() -> str | None:
    """What the build needs and this machine lacks, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH; set CXX or install g++)"
    scripts = sysconfig.get_path("scripts")  # where `pip install ninja` puts it, when PATH lacks it
    if shutil.which("ninja") is None and scripts and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        return "no ninja on PATH (pip install ninja)"
    return None


def build(flags: list[str] = FLAGS):
    """Compile `csrc/int8.cpp` with these compiler flags (or load the cached build) and register its
    ops as torch.ops.roberta; returns that namespace. Raises where the build fails. A process can
    hold one build (the ops' names are the same in each): tests build others in a subprocess."""
    from torch.utils.cpp_extension import load

    name = build_name(flags)
    folder = build_root() / name
    if not any(folder.glob(f"{name}*.so")):
        print(f"roberta: compiling the int8 kernels for this CPU, once, into {folder} ...", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    load(
        name,
        [str(SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.roberta


def int8_ops():
    """The compiled int8 kernels for this CPU (built at the first call of a process where no
    cached build exists), or None where they are off or cannot be built (see the module docstring;
    `unavailable_reason()` says why). Thread-safe; the answer is kept for the process."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


def unavailable_reason() -> str | None:
    """Why `int8_ops()` is None, or None where it is not (or has not been asked yet)."""
    return _why_not


def _load():
    global _why_not
    if os.environ.get("ROBERTA_KERNELS", "1") == "0":
        _why_not = "turned off by ROBERTA_KERNELS=0"
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        _why_not = f"the kernels are written for x86-64 CPUs, not {platform.machine()}"
        return None
    missing = missing_tools()
    if missing:
        _why_not = missing
        return None
    try:
        ops = build()
    except Exception as err:  # a failed build costs speed, not the answer: torch's ops take over
        _why_not = f"the build failed: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        warnings.warn(f"roberta's int8 kernels are not used: {_why_not}", stacklevel=3)
        return None
    if ops.isa() not in FAST_ISAS:
        _why_not = f"this CPU has neither AVX-512 nor AVX2 (the build is {ops.isa()!r})"
        return None
    return ops
