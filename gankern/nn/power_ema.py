"""The mathematics of power-function EMA and its post-hoc synthesis (Karras et al. 2024, "EDM2").

A power-function EMA of exponent gamma averages the training iterates with weight proportional
to tau^gamma over [0, t]: the profile p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1). Its relative
standard deviation sigma_rel (the width of the profile over its length) names it:
    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)).
Tracked step by step, theta_hat <- beta_t theta_hat + (1 - beta_t) theta_t with
beta_t = (1 - 1/t)^(gamma + 1) (t = 1, 2, ... counts updates; beta_1 = 0 copies), which gives
iterate tau exactly the weight of p over [tau - 1, tau]: (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1).

Post-hoc synthesis: snapshots of a few profiles (t_i, gamma_i) are combined as sum_i x_i theta_hat_i
so that sum_i x_i p_i is the least-squares fit of the wanted profile (t_r, gamma_r) in L2, i.e.
A x = b with A_ij = <p_i, p_j> and b_i = <p_i, p_r> (closed form below).
Everything here is float64 NumPy: these are a few hundred numbers, never tensors.
"""

from __future__ import annotations

import math

import numpy as np

# sigma_rel -> gamma has a positive solution only below sigma_rel(gamma=0) = 1/sqrt(12).
MAX_SIGMA_REL = 1.0 / math.sqrt(12.0)


def check_sigma_rel(sigma_rel, name: str = "sigma_rel") -> float:
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(f"{name} must be a float in (0, {MAX_SIGMA_REL:.4f}) (a relative EMA length; "
                         f"EDM2 uses 0.05-0.15), got {sigma_rel!r}")
    return float(sigma_rel)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma > 0 whose profile has this sigma_rel: the largest real root of
    (gamma + 2)^2 (gamma + 3) sigma_rel^2 = gamma + 1, i.e. of
    gamma^3 + 7 gamma^2 + (16 - 1/sigma_rel^2) gamma + (12 - 1/sigma_rel^2)."""
    s2 = check_sigma_rel(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def power_beta(t: int, gamma: float) -> float:
    """The decay of update number t (from 1) of a power EMA: (1 - 1/t)^(gamma + 1)."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def profile_dot(t_a, gamma_a, t_b, gamma_b):
    """<p_a, p_b> = integral over [0, min(t_a, t_b)] of p_a p_b, elementwise over arrays:
    (gamma_a + 1)(gamma_b + 1) min^(gamma_a + gamma_b + 1) / ((gamma_a + gamma_b + 1) t_a^(gamma_a+1) t_b^(gamma_b+1)),
    written with the ratio min/max so that large t and gamma do not overflow."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(x, dtype=np.float64) for x in (t_a, gamma_a, t_b, gamma_b))
    a_first = t_a <= t_b
    ratio = np.where(a_first, t_a / t_b, t_b / t_a)
    exponent = np.where(a_first, gamma_b, gamma_a)  # the later profile's exponent survives
    t_max = np.maximum(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) * ratio ** exponent / ((gamma_a + gamma_b + 1) * t_max)


def solve_coefficients(snap_t, snap_gamma, target_t: float, target_gamma: float) -> np.ndarray:
    """x minimizing ||sum_i x_i p_i - p_target||_2 over the snapshot profiles (least squares,
    as in EDM2; a rank-deficient A, e.g. two snapshots of one profile at one step, is fine)."""
    snap_t = np.asarray(snap_t, dtype=np.float64)
    snap_gamma = np.asarray(snap_gamma, dtype=np.float64)
    A = profile_dot(snap_t[:, None], snap_gamma[:, None], snap_t[None, :], snap_gamma[None, :])
    b = profile_dot(snap_t, snap_gamma, float(target_t), float(target_gamma))
    return np.linalg.lstsq(A, b, rcond=None)[0]


def discrete_weights(t: int, gamma: float) -> np.ndarray:
    """The weight of iterates 1..t in a power EMA tracked with power_beta (sums to 1)."""
    tau = np.arange(1, t + 1, dtype=np.float64)
    return (tau / t) ** (gamma + 1) - ((tau - 1) / t) ** (gamma + 1)
