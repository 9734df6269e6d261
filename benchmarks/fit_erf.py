"""The rational approximation of erf in roberta/csrc/kernels.cpp's GELU (`vgelu`), fitted and checked.

    erf(z) ~ z P(z²) / Q(z²) on |z| <= 4 (beyond, ±1: erf(4) = 1 - 1.5e-8)

P has 7 coefficients and Q 5, Q's constant 1, fitted to math.erf on [0, 4] by iteratively
reweighted linear least squares on z P(z²) - erf(z) Q(z²) (the weights pushed towards the largest
errors: near-minimax). Prints the coefficients as fp32 (what the kernel holds) and the largest error
of the fp32 evaluation, Horner's rule as in the kernel, on a fine grid.

    python benchmarks/fit_erf.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np

P, Q, TOP = 7, 5, 4.0


def fit(iterations: int = 60) -> tuple[np.ndarray, np.ndarray]:
    z = np.linspace(1e-4, TOP, 20_000)
    y = np.array([math.erf(v) for v in z])
    t = z * z
    design = np.column_stack([z * t**i for i in range(P)] + [-y * t**j for j in range(1, Q)])
    w = np.ones_like(z)
    for _ in range(iterations):
        c, *_ = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)
        p, q = c[:P], np.concatenate([[1.0], c[P:]])
        err = np.abs(z * np.polyval(p[::-1], t) / np.polyval(q[::-1], t) - y)
        w = w * (err / err.max() + 0.05) ** 0.5
        w /= w.max()
    return p.astype(np.float32), q.astype(np.float32)


def fp32_error(p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """(largest |error|, where) of the fp32 evaluation against math.erf on [0, TOP]."""
    z = np.linspace(0.0, TOP, 400_001, dtype=np.float32)
    t = z * z
    num, den = np.float32(p[-1]), np.float32(q[-1])
    for k in range(P - 2, -1, -1):
        num = num * t + p[k]
    for k in range(Q - 2, -1, -1):
        den = den * t + q[k]
    err = np.abs(z * num / den - np.array([math.erf(float(v)) for v in z]))
    return float(err.max()), float(z[err.argmax()])


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    p, q = fit()
    worst, at = fp32_error(p, q)
    print("P (z² powers 0..6):", ", ".join(f"{v!r}" for v in p.tolist()))
    print("Q (z² powers 0..4):", ", ".join(f"{v!r}" for v in q.tolist()))
    print(
        f"fp32 evaluation: largest |error| {worst:.2e} at z = {at:.4f}; beyond |z| = {TOP}: {1 - math.erf(TOP):.1e}"
    )


if __name__ == "__main__":
    main()
