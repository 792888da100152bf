#!/usr/bin/env python3
"""Fits the erfc factor of GELU-erf's vector kernel (include/polyformer/kernels/detail/vector_kernels.hpp, erfc_p).

For z >= 0, erfc(z) = t·e^(−z²)·e^(P(t)) with t = 2/(2 + z). P is a least-squares polynomial of degree 9 in t,
fitted in double on 4,000 Chebyshev points of t in [0.15, 1] (z from 0 to 11.3; past it erfc underflows in float),
to ln(erfc(z)·e^(z²)/t). Prints the coefficients, highest power first, and the fit's largest error on a fine grid.
Run with any python3 that has numpy: python3 tests/erfc_fit.py
"""
import math

import numpy as np


def target(t):
    z = 2.0 / t - 2.0
    return np.array([math.log(math.erfc(zz) * math.exp(zz * zz) / tt) for zz, tt in zip(z, t)])


def main():
    lo, hi, degree = 0.15, 1.0, 9
    k = np.arange(4000)
    t = (np.cos(np.pi * (k + 0.5) / 4000) + 1.0) / 2.0 * (hi - lo) + lo
    coefficients = np.polyfit(t, target(t), degree).astype(np.float32)
    grid = np.linspace(lo, hi, 200001)
    error = np.max(np.abs(np.polyval(coefficients.astype(np.float64), grid) - target(grid)))
    print(", ".join("%.9ef" % c for c in coefficients))
    print("largest error of ln(erfc) on the grid: %.2g" % error)


if __name__ == "__main__":
    main()
