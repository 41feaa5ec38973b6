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


def assert_update_close(after, before, expected_update, rtol: float = 1e-4, msg: str = "") -> None:
    """``after − before`` equals ``expected_update`` where ``after`` was *stored* in ``after``'s dtype.

    Storing ``before + update`` rounds it to half a unit in the last place of the *weight*, which can be
    a sizeable fraction of a small update; that rounding is allowed on top of ``rtol · max|update|``
    (the comparison runs in float64, ``expected_update`` ideally computed in float64 too)."""
    dtype = after.dtype if isinstance(after, torch.Tensor) else np.asarray(after).dtype
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype if isinstance(dtype, torch.dtype) else dtype
    a, b, u = _f64(after), _f64(before), _f64(expected_update)
    rounding = np.spacing(np.abs(a).astype(np_dtype)).astype(np.float64)
    err = np.abs((a - b) - u)
    allowed = rtol * np.abs(u).max(initial=0.0) + rounding
    if (err > allowed).any():
        i = np.unravel_index(np.argmax(err - allowed), a.shape)
        raise AssertionError(f"{msg}: update off by {err[i]:.3g} at {tuple(int(j) for j in i)} (allowed {allowed[i]:.3g}: "
                             f"rtol {rtol:g} of max |update| {np.abs(u).max():.3g} + one ulp of the stored weight)")
