"""The retrieval limit of a RoPE base (Men et al., "Base of RoPE Bounds Context Length", NeurIPS 2024).

B(m; b, d) = sum_i cos(m * b^(-2i/d)) over the d/2 rotary pairs: a query still scores a similar key above
a random one at distance m only while B(m) >= 0. Pure numpy (no torch); see docs/design.md, The laws.
"""

from __future__ import annotations

import math

import numpy as np

from harness.core.errors import InputError
from harness.law.liu import _check_base, _check_length, _check_rotary_dim

# --- the retrieval limit (Men et al., "Base of RoPE Bounds Context Length", NeurIPS 2024) -------------

# retrieval_bound looks for the first B(m) < 0 at distances m < RETRIEVAL_CAP (67,108,864 tokens).
RETRIEVAL_CAP = 1 << 26
# min_base_for_retrieval searches bases in this range. No base <= 2 qualifies for any length > 2*pi: every
# theta_n then lies in (1/2, 1], so 4*theta_n lies in (2, 4] where cos < 0, and B(4) < 0.
BASE_SEARCH_RANGE = (2.0, 1e30)
# Relative step of min_base_for_retrieval's log grid: feasible islands narrower than this can be missed.
BASE_GRID_STEP = 1e-3

_ROW = 128  # distances per row of a score block: m = row*_ROW + k with 0 <= k < _ROW
_BLOCK = 1 << 20  # at most this many B values are held at once (bounded memory, ~8 MB in float64)
# Rows per matrix product. OpenBLAS runs products under 2^18 multiply-adds (8 x 128 x 128) on one thread;
# larger ones it splits over threads, which on a busy 2-core machine made the search 3-5x slower.
_GEMM_ROWS = 8
_WINDOW = 128  # grid bases pre-screened together
_F32_MARGIN = 1e-3  # float32 B is off by ~1e-5: the pre-screen rules a base out only below -margin
_REFINE_TOL = 1e-9  # bisection inside the first feasible grid cell stops at this relative width


def _check_distances(m) -> np.ndarray:
    try:
        distances = np.asarray(m)
    except (TypeError, ValueError):
        distances = np.asarray(None)
    what = repr(m) if distances.ndim == 0 else f"an array of {distances.dtype}"
    if distances.dtype.kind not in "iuf" or not np.all(np.isfinite(distances)):
        raise InputError(f"distance {what} is not a finite number or an array of them: pass token distances "
                         "such as 4096 or numpy.arange(4096)")
    return distances.astype(np.float64)


def _check_cap(cap: int) -> int:
    integral = not isinstance(cap, bool) and hasattr(type(cap), "__index__")
    if not integral or cap.__index__() < 2:
        raise InputError(f"search cap {cap!r} is not an integer >= 2: "
                         f"pass a token count such as {RETRIEVAL_CAP}")
    return cap.__index__()


def _rotary_thetas(bases, rotary_dim: int) -> np.ndarray:
    """theta_n = b^(-2n/d) for n < d/2, one row per base: shape (len(bases), d/2)."""
    return (np.asarray(bases, dtype=np.float64).reshape(-1, 1)
            ** (-2.0 * np.arange(rotary_dim // 2) / rotary_dim))


def _phasors(theta: np.ndarray, start: float, stride: float, count: int, last: bool = False) -> np.ndarray:
    """exp(i*(start + j*stride)*theta) for j < count, shape (W, count, d/2), or (W, d/2, count) if `last`.
    Filled by doubling (entry j+h is entry j times exp(i*h*stride*theta)), so each entry is a product of at
    most log2(count)+1 directly computed phasors: no drift, and O(d log count) cos/sin calls, not
    O(d count)."""
    axis = 2 if last else 1
    shape = list(theta.shape)
    shape.insert(axis, count)
    out = np.empty(shape, dtype=np.complex128)

    def part(a: int, b: int) -> tuple:
        return (slice(None), slice(None), slice(a, b)) if last else (slice(None), slice(a, b))

    out[part(0, 1)] = np.expand_dims(np.exp(1j * (start * theta)), axis)
    filled = 1
    while filled < count:
        take = min(filled, count - filled)
        step = np.expand_dims(np.exp(1j * ((filled * stride) * theta)), axis)
        np.multiply(out[part(0, take)], step, out=out[part(filled, filled + take)])
        filled += take
    return out


def _columns(theta: np.ndarray, dtype) -> np.ndarray:
    """[cos(k*theta); sin(k*theta)] for k < _ROW, shape (W, d, _ROW): the right factor of every score
    block."""
    p = _phasors(theta, 0.0, 1.0, _ROW, last=True)
    half = theta.shape[1]
    columns = np.empty((theta.shape[0], 2 * half, _ROW), dtype=dtype)
    columns[:, :half] = p.real
    columns[:, half:] = p.imag
    return columns


def _scores(theta: np.ndarray, columns: np.ndarray, first_row: int, row_stride: int, rows: int) -> np.ndarray:
    """B(r*_ROW + k) for rows r = first_row + j*row_stride (j < rows) and k < _ROW, shape (W, rows, _ROW), one
    matrix product per base: cos((r + k)*theta) = cos(r*theta)cos(k*theta) - sin(r*theta)sin(k*theta), and
    the product sums over theta. Only row starts and the _ROW offsets need cos/sin: ~2d flops per distance."""
    p = _phasors(theta, float(first_row * _ROW), float(row_stride * _ROW), rows)
    width, half = theta.shape
    padded = -(-rows // _GEMM_ROWS) * _GEMM_ROWS
    left = np.zeros((width, padded, 2 * half), dtype=columns.dtype)
    left[:, :rows, :half] = p.real
    np.negative(p.imag, out=left[:, :rows, half:], casting="same_kind")
    # many small products (broadcast over the row groups) instead of one large one per base: see _GEMM_ROWS
    out = np.matmul(left.reshape(width, padded // _GEMM_ROWS, _GEMM_ROWS, 2 * half), columns[:, None])
    return out.reshape(width, padded, _ROW)[:, :rows]


def _first_negative(theta: np.ndarray, stop: int) -> int | None:
    """Smallest integer 1 <= m < stop with B(m) < 0 (float64) for the one base in `theta`, else None.
    Blocks of doubling size, in order: it stops at the first dip and never holds more than _BLOCK
    values."""
    columns = _columns(theta, np.float64)
    total_rows = -(-stop // _ROW)
    row, rows = 0, 1
    while row < total_rows:
        rows = min(rows, total_rows - row)
        values = _scores(theta, columns, row, 1, rows).reshape(-1)[: stop - row * _ROW]  # B(0) = d/2 > 0
        negative = np.flatnonzero(values < 0)
        if negative.size:
            return row * _ROW + int(negative[0])
        row, rows = row + rows, min(2 * rows, _BLOCK // _ROW)
    return None


def _dip_free(theta: np.ndarray, stop: int, dtype=np.float64, margin: float = 0.0) -> np.ndarray:
    """Indices (ascending) of the bases (rows of `theta`) with no B(m) < -margin at 0 <= m < stop, in `dtype`.

    Row blocks are visited coarse to fine: row 0, then the odd multiples of span/2, span/4, ..., 1 (span = a
    power of two >= the row count), i.e. bit-reversed order, and a base leaves at the first stage with a
    dip. Near the answer ~15% of blocks hold a dip, so this finds one ~20x sooner than an in-order scan."""
    columns = _columns(theta, dtype)
    alive = np.arange(theta.shape[0])
    total = -(-stop // _ROW)
    last_valid = stop - (total - 1) * _ROW  # columns of the last row that are distances < stop
    span = 1 << (total - 1).bit_length()
    stages = [(0, span)] + [(span >> j, span >> (j - 1)) for j in range(1, span.bit_length())]
    for first, stride in stages:
        count = len(range(first, total, stride))
        for j0 in range(0, count, _BLOCK // _ROW):
            rows = min(_BLOCK // _ROW, count - j0)
            row0 = first + j0 * stride
            per_call = max(1, _BLOCK // (rows * _ROW))
            keep = []
            for s in range(0, alive.size, per_call):
                idx = alive[s:s + per_call]
                values = _scores(theta[idx], columns[idx], row0, stride, rows)
                if row0 + (rows - 1) * stride == total - 1:
                    values[:, -1, last_valid:] = np.inf
                keep.append(idx[values.min(axis=(1, 2)) >= -margin])
            alive = np.concatenate(keep)
            if not alive.size:
                return alive
    return alive


def _feasible(base: float, rotary_dim: int, stop: int) -> bool:
    """B(m) >= 0 at every 0 <= m < stop, checked in full in float64."""
    return _dip_free(_rotary_thetas([base], rotary_dim), stop).size == 1


def _base_grid(first: int, stop: int) -> np.ndarray:
    """Bases k = first .. stop-1 of min_base_for_retrieval's grid: lo * (1 + BASE_GRID_STEP)^k."""
    return BASE_SEARCH_RANGE[0] * np.exp(
        math.log1p(BASE_GRID_STEP) * np.arange(first, stop, dtype=np.float64))


def retrieval_score(m, base: float, rotary_dim: int):
    """B(m) = sum_n cos(m*theta_n), theta_n = base^(-2n/d), n < d/2: how much more a query attends to a key
    similar to it than to a random one at distance m (Men et al.). Summed directly in float64 for a distance
    or an array of them (any shape; a float for a number). B(0) = d/2."""
    d = _check_rotary_dim(rotary_dim)
    b = _check_base(base, "base")
    distances = _check_distances(m)
    theta = _rotary_thetas([b], d)[0]
    flat = distances.reshape(-1)
    out = np.empty(flat.shape)
    chunk = max(1, _BLOCK // theta.size)  # bounded memory for long arrays
    for s in range(0, flat.size, chunk):
        out[s:s + chunk] = np.cos(np.multiply.outer(flat[s:s + chunk], theta)).sum(axis=1)
    return float(out[0]) if distances.ndim == 0 else out.reshape(distances.shape)


def retrieval_bound(base: float, rotary_dim: int, cap: int = RETRIEVAL_CAP) -> int | None:
    """The smallest integer m >= 1 with B(m) < 0, i.e. the longest context (in tokens) whose every relative
    distance 0 <= m < L keeps B(m) >= 0: a context of that many tokens still discriminates, one token more
    contains the first distance that does not. None when B(m) >= 0 for every m < cap (the bound is >= cap).
    Not monotone in the base (d=128: 1.1e5 gives 7,951, 1.2e5 gives 6,852), though it grows over decades."""
    d = _check_rotary_dim(rotary_dim)
    b = _check_base(base, "base")
    return _first_negative(_rotary_thetas([b], d), _check_cap(cap))


def min_base_for_retrieval(length: float, rotary_dim: int) -> float | None:
    """Smallest base b with B(m) >= 0 at every integer distance 0 <= m < length (then retrieval_bound(b) >=
    length), for d rotary dims (partial rotary: d = the rotary dims, not head_dim). None when no base in
    BASE_SEARCH_RANGE qualifies (d = 2: B(2) = cos(2) < 0 for every base).

    The feasible bases are not an interval (islands), so bisection over b would be wrong. Method: walk the
    log grid 2*(1 + BASE_GRID_STEP)^k upwards; rule a grid base out at the first float32 B < -1e-3 found
    (distance blocks coarse to fine, see _dip_free); confirm the first survivor with a full float64 check;
    then bisect (to 1e-9 relative)
    inside the cell between it and the infeasible grid base below it. The returned base passed the full
    float64 check, and no grid base below it is feasible; an island narrower than a grid step can be missed.
    Bases above it are not all feasible either: check the retrieval_bound of a base before relying on it.
    """
    target = _check_length(length, "context length")
    d = _check_rotary_dim(rotary_dim)
    stop = math.ceil(target)  # the distances 0 <= m < length are 0 .. stop-1
    if stop > RETRIEVAL_CAP:
        raise InputError(f"context length {target:g} is beyond the search cap {RETRIEVAL_CAP}: "
                         "pass a length up "
                         f"to {RETRIEVAL_CAP} tokens")
    count = math.floor(math.log(BASE_SEARCH_RANGE[1] / BASE_SEARCH_RANGE[0]) / math.log1p(BASE_GRID_STEP)) + 1
    for first in range(0, count, _WINDOW):
        bases = _base_grid(first, min(first + _WINDOW, count))
        # float32 pre-screen: it rules a base out only where B < -1e-3, well beyond float32's error
        for i in _dip_free(_rotary_thetas(bases, d), stop, np.float32, _F32_MARGIN):
            if _feasible(float(bases[i]), d, stop):
                k = first + int(i)
                if k == 0:
                    return float(bases[0])
                return _refine(float(_base_grid(k - 1, k)[0]), float(bases[i]), d, stop)
    return None


def _refine(infeasible: float, feasible: float, rotary_dim: int, stop: int) -> float:
    """Bisect (geometric midpoints) between an infeasible and a feasible base; returns a checked feasible
    one."""
    lo, hi = infeasible, feasible
    while hi / lo - 1 > _REFINE_TOL:
        mid = math.sqrt(lo * hi)
        if _feasible(mid, rotary_dim, stop):
            hi = mid
        else:
            lo = mid
    return hi
