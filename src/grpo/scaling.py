"""ScaleRL's compute-performance fit and the confidence intervals of a sweep table (numpy only).

ScaleRL (Khatri et al. 2025, arXiv:2510.13786, eq. 1) fits the held-out pass rate ``R`` of an RL
run against its training compute ``C`` with a sigmoid::

    R(C) = R0 + (A - R0) / (1 + (C_mid / C) ** B)

* ``A``: the asymptote, the pass rate the recipe tends to with unlimited compute;
* ``B``: the efficiency, how steeply the curve rises (in log compute) towards ``A``;
* ``C_mid``: the compute at which half the gain ``A - R0`` is reached;
* ``R0``: the pass rate before RL, taken from the evaluation at step 0 (not fitted).

Two recipes are compared by ``A`` (where they go) and ``B`` / ``C_mid`` (how fast), not by one
final number. Deviations from the paper: ScaleRL fixes ``R0`` the same way but fits on compute
in GPU-hours from 1.5k steps on; here ``C`` is whatever the caller passes (tokens or steps, see
``grpo.sweep``), and every point with ``C > 0`` is used.

How the fit is made (:func:`fit_scalerl`): for fixed ``B`` and ``C_mid`` the model is linear in
``A``, so ``A`` has a closed-form least-squares value. A grid over ``(log B, log C_mid)`` picks
the start (no initial guess to get wrong, no local minimum far from the data), then
Levenberg-Marquardt refines all three. ``A`` is kept in ``[0, 1]`` (a pass rate). Intervals come
from the fit's covariance ``s^2 (J^T J)^-1`` with a t quantile (one run), or from the bootstrap
over seeds in ``grpo.sweep`` (several runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Student t quantile t_{0.975, df} for df = 1..30 (two-sided 95%); larger df use an expansion.
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (4 digits).

    >>> t_quantile_975(2)
    4.3027
    >>> round(t_quantile_975(1000), 3)
    1.962
    """
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got df={df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion of t in 1/df around the normal quantile
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class MeanCI:
    """A mean with its 95% t-interval half width (``nan`` with fewer than 2 values)."""

    mean: float
    half_width: float
    n: int

    def __str__(self) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean:.3f} (n={self.n})"
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def mean_ci(values: Sequence[float]) -> MeanCI:
    """Mean and 95% t-interval: ``t_{0.975, n-1} * sd / sqrt(n)`` (sd with ``n - 1``).

    >>> str(mean_ci([0.5, 0.6, 0.7]))  # sd 0.1, se 0.0577, t_2 = 4.3027
    '0.600 ± 0.248'
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return MeanCI(float("nan"), float("nan"), 0)
    if x.size == 1:
        return MeanCI(float(x[0]), float("nan"), 1)
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    return MeanCI(float(x.mean()), t_quantile_975(x.size - 1) * se, int(x.size))


def scalerl_curve(C, R0: float, A: float, B: float, C_mid: float) -> np.ndarray:
    """``R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)`` (ScaleRL eq. 1); ``R(0) = R0``."""
    C = np.asarray(C, dtype=float)
    with np.errstate(divide="ignore", over="ignore"):
        u = np.exp(B * (math.log(C_mid) - np.log(np.where(C > 0, C, 1.0))))
    return np.where(C > 0, R0 + (A - R0) / (1.0 + u), R0)


@dataclass(frozen=True)
class ScaleRLFit:
    """A fitted curve. ``*_ci`` are 95% intervals ``(low, high)``, or ``None`` when there are too
    few points (or seeds) to give one; ``interval`` says where they come from."""

    A: float
    B: float
    C_mid: float
    R0: float
    n_points: int
    rmse: float
    A_ci: tuple[float, float] | None = None
    B_ci: tuple[float, float] | None = None
    C_mid_ci: tuple[float, float] | None = None
    interval: str = "none"  # "fit covariance", "bootstrap over N seeds" or "none"

    def predict(self, C) -> np.ndarray:
        return scalerl_curve(C, self.R0, self.A, self.B, self.C_mid)


def _design(x, lb, m):
    """s = 1 / (1 + exp(B (m - x))) with x = log C, B = exp(lb), m = log C_mid; and u."""
    with np.errstate(over="ignore"):  # a search step may try a huge B: inf, clipped below
        u = np.exp(np.clip(np.exp(lb) * (m - x), -60, 60))
    return 1.0 / (1.0 + u), u


def _best_A(s, y, R0):
    """Closed-form least-squares A for fixed s (A kept in [0, 1])."""
    denom = (s * s).sum(axis=-1)
    a = (s * (y - R0)).sum(axis=-1) / np.maximum(denom, 1e-300)
    return np.clip(R0 + a, 0.0, 1.0)


def fit_scalerl(C: Sequence[float], R: Sequence[float], R0: float) -> ScaleRLFit:
    """Least-squares fit of ``A, B, C_mid`` to points ``(C, R)`` with ``R0`` fixed.

    Points with ``C <= 0`` carry no information on the curve (it is ``R0`` there) and are
    dropped. Needs at least 3 points with ``C > 0`` (3 parameters); intervals from the fit's
    covariance need at least 4.
    """
    C_arr, y = np.asarray(C, dtype=float), np.asarray(R, dtype=float)
    keep = (C_arr > 0) & np.isfinite(y)
    C_arr, y = C_arr[keep], y[keep]
    if C_arr.size < 3:
        raise ValueError(
            f"the ScaleRL fit has 3 parameters (A, B, C_mid) and needs at least 3 evaluations "
            f"after step 0, got {C_arr.size}: evaluate more often (trainer.eval.steps)"
        )
    x = np.log(C_arr)
    # grid start: B from 0.1 to 20, C_mid from well below to well above the measured range
    lbs = np.log(np.geomspace(0.1, 20.0, 36))
    span = max(x.max() - x.min(), 1.0)
    ms = np.linspace(x.min() - span, x.max() + span, 61)
    LB, M = np.meshgrid(lbs, ms, indexing="ij")
    s, _ = _design(x[None, None, :], LB[..., None], M[..., None])
    A = _best_A(s, y, R0)
    sse = ((R0 + (A[..., None] - R0) * s - y) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    theta = np.array([A[i, j], LB[i, j], M[i, j]])

    def residual(t):
        s, _ = _design(x, t[1], t[2])
        return R0 + (t[0] - R0) * s - y

    def jacobian(t):
        s, u = _design(x, t[1], t[2])
        B, a = math.exp(t[1]), t[0] - R0
        ds = -(s * s) * u  # d s / d (B (m - x))
        return np.stack([s, a * ds * B * (t[2] - x), a * ds * B], axis=1)

    lam, r = 1e-3, residual(theta)
    for _ in range(200):  # Levenberg-Marquardt
        J = jacobian(theta)
        JTJ, g = J.T @ J, J.T @ r
        step = np.linalg.solve(JTJ + lam * np.diag(np.diag(JTJ) + 1e-12), -g)
        trial = theta + step
        trial[0] = min(max(trial[0], 0.0), 1.0)
        r_trial = residual(trial)
        if (r_trial**2).sum() < (r**2).sum():
            converged = np.abs(trial - theta).max() < 1e-10
            theta, r, lam = trial, r_trial, lam / 3
            if converged:
                break
        else:
            lam *= 4
            if lam > 1e12:
                break
    A_hat, B_hat, m_hat = float(theta[0]), math.exp(theta[1]), float(theta[2])
    n = C_arr.size
    fit = dict(
        A=A_hat,
        B=B_hat,
        C_mid=math.exp(m_hat),
        R0=float(R0),
        n_points=n,
        rmse=float(np.sqrt((r**2).mean())),
    )
    if n > 3:
        cov = _covariance(jacobian(theta), r, n)
        if cov is not None:
            t = t_quantile_975(n - 3)
            se = [float(v) for v in np.sqrt(np.diag(cov))]  # on (A, log B, log C_mid)
            return ScaleRLFit(
                **fit,
                A_ci=(A_hat - t * se[0], A_hat + t * se[0]),
                B_ci=(_exp(theta[1] - t * se[1]), _exp(theta[1] + t * se[1])),
                C_mid_ci=(_exp(m_hat - t * se[2]), _exp(m_hat + t * se[2])),
                interval="fit covariance",
            )
    return ScaleRLFit(**fit)


def _exp(v: float) -> float:
    """``exp`` of an interval end on the log scale; ``inf`` past float range (a parameter the
    points cannot pin down, e.g. B when the curve jumps between two evaluations)."""
    return math.exp(v) if v < 709.0 else math.inf


def _covariance(J: np.ndarray, r: np.ndarray, n: int) -> np.ndarray | None:
    """``s^2 (J^T J)^-1`` with ``s^2 = SSE / (n - 3)``; None when J^T J is singular."""
    try:
        inv = np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        return None
    cov = inv * float((r**2).sum()) / (n - 3)
    return cov if np.all(np.isfinite(cov)) and np.all(np.diag(cov) >= 0) else None
