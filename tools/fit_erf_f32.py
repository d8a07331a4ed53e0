#!/usr/bin/env python3
"""Fits the polynomials of flsl::detail::erf_f32 (include/flsl/expr/vector_math.hpp).

erf(t) = t P(t^2) for 0 <= t < 1 (P of degree 6) and erf(t) = 1 - exp(-t^2) Q(1/t) for
1 <= t <= 4 (Q of degree 10, fitting erfc(t) exp(t^2)). Each is a fit of minimal maximum relative
error, approached by iteratively reweighted least squares (Lawson's algorithm) on Chebyshev
nodes, in f64. Prints the coefficients (lowest degree first) and the f64 fit errors; the header
evaluates them by Horner's rule from the highest degree, in f32.

Usage: python3 tools/fit_erf_f32.py   (needs numpy)
"""
import math

import numpy as np


def fit_relative(x, y, basis, degree, iterations=30):
    """Coefficients c (increasing degree) minimising max |sum c_k basis^k - y| / |y|."""
    v = np.vander(basis, degree + 1, increasing=True)
    w = np.ones_like(x)
    for _ in range(iterations):
        s = np.sqrt(w) / np.abs(y)
        c, *_ = np.linalg.lstsq(v * s[:, None], y * s, rcond=None)
        e = np.abs(v @ c - y) / np.abs(y)
        w = w * e
        w /= w.sum()
    return c, float(np.max(np.abs(v @ c - y) / np.abs(y)))


def main():
    nodes = np.cos(np.linspace(0, math.pi, 4000))
    t_near = nodes * 0.5 + 0.5 + 1e-6  # (0, 1]
    near, e_near = fit_relative(t_near, np.array([math.erf(t) / t for t in t_near]),
                                t_near * t_near, 6)
    t_tail = nodes * 1.5 + 2.5  # [1, 4]
    tail, e_tail = fit_relative(t_tail,
                                np.array([math.erfc(t) * math.exp(t * t) for t in t_tail]),
                                1 / t_tail, 10)
    print("P (erf(t) / t in t^2):", ", ".join(f"{c:.9e}" for c in near), f"; max rel {e_near:.2e}")
    print("Q (erfc(t) e^(t^2) in 1/t):", ", ".join(f"{c:.9e}" for c in tail),
          f"; max rel {e_tail:.2e}")


if __name__ == "__main__":
    main()
