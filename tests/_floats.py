"""Float comparisons that survive another CPU vendor and another thread count.

Summation order (SIMD width, blocking, threads) moves a float result by a few ulps *of the terms summed*,
not of the result: an entry of a gradient that is the small difference of large terms can move by far
more than its own rtol allows. The tolerance here is therefore scaled to the magnitude of the whole
tensor (its largest entry), and the comparison runs in float64.
"""
from __future__ import annotations

import numpy as np
import torch


def _f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def scaled_error(actual, expected) -> float:
    """max |actual − expected| / max(|expected|, |actual|): 0 for two all-zero tensors."""
    a, e = _f64(actual), _f64(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {e.shape}")
    scale = max(np.abs(e).max(initial=0.0), np.abs(a).max(initial=0.0))
    return float(np.abs(a - e).max(initial=0.0) / scale) if scale > 0 else 0.0


def assert_close_scaled(actual, expected, rtol: float = 1e-4, msg: str = "") -> None:
    """Every entry within ``rtol · max|expected|`` of its reference (NaN/inf positions must match)."""
    a, e = _f64(actual), _f64(expected)
    if not np.array_equal(np.isfinite(a), np.isfinite(e)) or not np.array_equal(a[~np.isfinite(a)], e[~np.isfinite(e)]):
        raise AssertionError(f"{msg}: non-finite entries differ")
    ok = np.isfinite(e)
    err = scaled_error(a[ok], e[ok])
    if err > rtol:
        i = np.unravel_index(np.argmax(np.abs(np.where(ok, a - e, 0))), a.shape)
        raise AssertionError(f"{msg}: max |Δ| is {err:.3g} of the tensor's magnitude (allowed {rtol:g}); "
                             f"worst at {tuple(int(j) for j in i)}: {a[i]!r} vs {e[i]!r}")
