"""Statistics helpers: least-squares polynomial fits with seeded bootstrap confidence
intervals, and average ranks (for Spearman correlations and AUROC).

Used by the variability analysis: aggregated attention SD against mean
accuracy (quadratic) and against accuracy SD (linear).

Model: ``y = c_0 + c_1 x + ... + c_d x^d`` by least squares (``numpy.linalg.lstsq``);
``R^2 = 1 - SS_res / SS_tot`` (NaN when ``y`` is constant). Confidence intervals:
nonparametric pairs bootstrap, ``n_boot`` resamples of the ``n`` points with
replacement drawn by ``numpy.random.default_rng(seed)``, percentile intervals at level
``ci`` (resamples with fewer than ``d + 1`` distinct x values are left out). Non-finite
pairs are dropped before fitting; fewer than ``d + 1`` distinct x values is an error.
No model passes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xaiscope.errors import ConfigError, DataError


@dataclass
class Fit:
    """A fitted polynomial; coefficients in ascending order ``[c_0, c_1, ..., c_d]``."""

    degree: int
    coefficients: list[float]
    r2: float
    n: int
    ci: float
    n_boot: int
    seed: int
    coefficients_low: list[float]
    coefficients_high: list[float]
    r2_low: float
    r2_high: float

    def predict(self, x) -> np.ndarray:
        return np.polynomial.polynomial.polyval(np.asarray(x, dtype=np.float64), self.coefficients)

    def to_dict(self) -> dict:
        return asdict(self)


def _lstsq(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, float]:
    v = np.vander(x, degree + 1, increasing=True)
    coef, _, rank, _ = np.linalg.lstsq(v, y, rcond=None)
    if rank < degree + 1:  # too few distinct x values: the coefficients are not identifiable
        return np.full(degree + 1, np.nan), float("nan")
    resid = y - v @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return coef, r2


def fit_polynomial(x, y, degree: int, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> Fit:
    """Fit ``y ~ poly_degree(x)``; coefficients, R^2 and bootstrap percentile CIs (module docstring).

    Parameters
    ----------
    x, y : array-like of equal length
    degree : int >= 0
    n_boot : int, default 1000, bootstrap resamples (0: no intervals, NaN bounds)
    ci : float in (0, 1), default 0.95
    seed : int, default 0
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise DataError(f"A fit needs as many x as y values; got {x.size} and {y.size}.")
    if degree < 0:
        raise ConfigError(f"degree must be >= 0, got {degree}.")
    if not 0 < ci < 1:
        raise ConfigError(f"ci must lie in (0, 1), got {ci}.")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}.")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < degree + 1:
        raise DataError(f"A degree-{degree} fit needs at least {degree + 1} finite points; got {x.size}.")
    if np.unique(x).size < degree + 1:
        raise DataError(
            f"A degree-{degree} fit needs at least {degree + 1} distinct x values; got {np.unique(x).size}."
        )
    coef, r2 = _lstsq(x, y, degree)
    lo = [float("nan")] * (degree + 1)
    hi = list(lo)
    r2_lo = r2_hi = float("nan")
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, x.size, size=(n_boot, x.size))
        boots = np.empty((n_boot, degree + 1))
        r2s = np.empty(n_boot)
        for b in range(n_boot):
            boots[b], r2s[b] = _lstsq(x[idx[b]], y[idx[b]], degree)
        q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]
        ok = np.isfinite(boots).all(axis=1)  # resamples with too few distinct x values are left out
        if ok.any():
            lo, hi = (np.percentile(boots[ok], q, axis=0)).tolist()
        if np.isfinite(r2s).any():
            r2_lo, r2_hi = (float(v) for v in np.nanpercentile(r2s, q))
    return Fit(
        degree=degree,
        coefficients=[float(c) for c in coef],
        r2=float(r2),
        n=int(x.size),
        ci=ci,
        n_boot=n_boot,
        seed=seed,
        coefficients_low=[float(v) for v in lo],
        coefficients_high=[float(v) for v in hi],
        r2_low=r2_lo,
        r2_high=r2_hi,
    )


def quadratic(x, y, **kwargs) -> Fit:
    """``y = c_0 + c_1 x + c_2 x^2`` (see :func:`fit_polynomial`)."""
    return fit_polynomial(x, y, 2, **kwargs)


def linear(x, y, **kwargs) -> Fit:
    """``y = c_0 + c_1 x`` (see :func:`fit_polynomial`)."""
    return fit_polynomial(x, y, 1, **kwargs)
