"""Variational EM: coordinate ascent of the free energy over the guide q and the parameters.

The lecture's bound, for q(z) = prod_n q(z_n) and parameters lambda (Neal and Hinton 1998;
Bishop 2006, eq. 9.70-9.72):

.. math::

    F(q, \\lambda) = \\sum_n E_{q(z_n)}[\\log p(x_n, z_n; \\lambda) - \\log q(z_n)]
                  = \\log p(x; \\lambda) - KL(q \\| p(z | x; \\lambda)).

Each iteration is an E-step, q_{t+1} = argmax_{q in family} F(q, lambda_t), then an M-step,
lambda_{t+1} = argmax_lambda F(q_{t+1}, lambda), so F never decreases. Families for q:

- ``"exact"``: q(z_n) = p(z_n | x_n; lambda_t), KL = 0 and F = log p(x) after the E-step: VEM
  is EM, and reproduces :mod:`inference.em` iteration by iteration.
- ``"mean-field"``: factor analysis and PPCA take q(z_n) = prod_i N(m_ni, s_i^2). Against the
  Gaussian posterior N(mu_n, Lambda^{-1}) the best such q is m_n = mu_n, s_i^2 = 1 / Lambda_ii
  (Bishop 2006, sec. 10.1.2), Lambda = I + W^T Psi^{-1} W, so the E-step is exact within the
  family; F is below log p(x) by KL(q || p) whenever W^T Psi^{-1} W is not diagonal. But
  W -> W R (R orthogonal) leaves p(x) unchanged and some R makes W^T Psi^{-1} W diagonal, so
  the best (q, lambda) is still a maximum of the likelihood: mean-field VEM climbs more slowly
  than EM but reaches the same log p(x), at the rotation in which the posterior factorises (on
  iris, PPCA's closed-form loading). For the mixture q(c_n) is any categorical, which already
  contains the posterior: mean-field is the exact family there.

The M-step is a numerical maximisation, from lambda_t in float64, of F(q, lambda) written in
closed form in unconstrained parameters given q's fixed statistics, not EM's closed-form update
(L-BFGS with a strong-Wolfe line search, finished by Newton steps, see :func:`_maximise`):

- mixture, q = responsibilities r (N, K), parameters (K - 1 logits of the weights, loc, the
  lower triangle of scale_tril with log diagonal, or log scale for ``"diag"``):
  F = sum_nk r_nk [log w_k + log N(x_n; loc_k, Sigma_k)] + H[r];
- linear-Gaussian, q(z_n) = N(m_n, L L^T), m: (N, p), L: (p, p), parameters (loc, loading,
  log noise_variance): F = sum_n E_q[log N(x_n; W z_n + loc, Psi) + log N(z_n; 0, I)] + H[q]
  (:func:`gallery.models.linear_gaussian.elbo`).

Each model module has these pieces (``vem_e_step``, ``free_energy``, ``vem_objective``,
:mod:`gallery.models.protocol`); this module has the loop and the maximiser.

The mixture's covariance floor. EM's M-step (scikit-learn's) sets Sigma_k to the weighted
covariance S_k plus ``reg_covar * I``. Adding reg_covar I to Sigma inside F would not do that
(its maximiser is S_k whenever S_k > reg_covar I); what EM maximises is F with every x_n smeared
by independent N(0, reg_covar I) noise, E_eps[log N(x_n + eps; loc, Sigma)] =
log N(x_n; loc, Sigma) - reg_covar / 2 tr(Sigma^{-1}), whose maximiser over Sigma_k is exactly
S_k + reg_covar I. So the M-step maximises F - reg_covar / 2 sum_nk r_nk tr(Sigma_k^{-1}), the
same objective as EM, and ``reg_covar`` defaults to EM's 1e-6. With ``reg_covar=0`` it is F
itself and F's climb is guaranteed; with reg_covar > 0 F may drop by O(reg_covar) at an M-step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gallery.data.checks import check_data, clock
from gallery.models import owner
from inference.evaluate import log_likelihood

FAMILIES = ("exact", "mean-field")
Q = Any  # responsibilities (N, K), or (loc (N, p), scale_tril (p, p)) of q(z_n)


@dataclass(frozen=True)
class VEMResult:
    params: Any  # the model's Params, the last iterate
    log_likelihoods: Tensor  # (num_iters + 1,) mean log p(x) of the start and of every iterate
    elbos: Tensor  # (2 num_iters + 1,) mean F after E-step 0, M-step 1, E-step 1, M-step 2, ...
    converged: bool
    num_iters: int
    seconds: float


def free_energy(data: Tensor, q: Q, params: Any) -> Tensor:
    """(N,) F_n(q, lambda) = E_q[log p(x_n, z_n) - log q(z_n)] in closed form (the model's own)."""
    return owner(params).free_energy(data, q, params)


def vem_e_step(data: Tensor, params: Any, family: str = "exact") -> Q:
    """argmax_q F(q, params) within ``family``: responsibilities (N, K) for the mixture (both
    families); for z the posterior loc (N, p) with the posterior's scale_tril (p, p)
    (``"exact"``) or diag(Lambda_ii^{-1/2}) (``"mean-field"``)."""
    _check_family(family)
    return owner(params).vem_e_step(data, params, family)


def vem_m_step(data: Tensor, q: Q, params: Any, *, reg_covar: float = 1e-6, tol: float = 1e-10) -> Any:
    """argmax_lambda F(q, lambda) (for the mixture less the ``reg_covar`` smear, see the module
    docstring) from ``params`` until every gradient entry of the per-datum objective, in the
    unconstrained parameters, is below ``tol``; warns if it is not. ``q`` as :func:`vem_e_step`
    returns it. Never returns a lower objective than at ``params``."""
    objective, start, unpack = owner(params).vem_objective(data, q, params, reg_covar=reg_covar)
    return unpack(*_maximise(objective, start, tol))


def run_vem(
    data: Tensor,
    init: Any,
    *,
    family: str = "exact",
    max_iters: int = 100,
    tol: float = 1e-8,
    m_step_tol: float = 1e-10,
    reg_covar: float = 1e-6,
    progress: bool = False,
) -> VEMResult:
    """Variational EM from ``init`` (float64, on the data's device) until F after the E-step
    changes by less than ``tol`` nats per datum, or ``max_iters`` iterations; warn if not
    converged. The model follows ``init``: :class:`GMMParams` for the mixture,
    :class:`LinearGaussianParams` for factor analysis ((d,) noise) or PPCA (0-dim noise).

    :param data: (N, D) observations.
    :param family: ``"exact"`` or ``"mean-field"`` q (module docstring).
    :param m_step_tol: bound on each gradient entry of the per-datum M-step objective.
    :param reg_covar: the mixture's covariance floor, as :func:`inference.em.em_gmm`'s.
    """
    check_data(data)
    _check_family(family)
    _check_init(data, init)
    data, params = data.to(torch.float64), init.to(torch.float64)
    start = clock(data)
    q = vem_e_step(data, params, family)
    log_liks = [log_likelihood(data, params).mean()]
    elbos = [free_energy(data, q, params).mean()]
    converged = False
    for _ in tqdm(range(max_iters), desc="VEM", disable=None if progress else True, leave=False):
        params = vem_m_step(data, q, params, reg_covar=reg_covar, tol=m_step_tol)
        elbos.append(free_energy(data, q, params).mean())
        q = vem_e_step(data, params, family)
        elbos.append(free_energy(data, q, params).mean())
        log_liks.append(log_likelihood(data, params).mean())
        if abs(float(elbos[-1] - elbos[-3])) < tol:
            converged = True
            break
    if not converged and max_iters > 0:
        warnings.warn(f"VEM did not converge to tol={tol} in {max_iters} iterations", stacklevel=2)
    num_iters = len(log_liks) - 1
    return VEMResult(
        params,
        torch.stack(log_liks).cpu(),
        torch.stack(elbos).cpu(),
        converged,
        num_iters,
        clock(data) - start,
    )


# Helpers ------------------------------------------------------------------------------------


def _maximise(objective: Callable[..., Tensor], start: tuple[Tensor, ...], tol: float) -> list[Tensor]:
    """Maximise ``objective(*raw)`` from ``start``: L-BFGS with a strong-Wolfe line search, then
    Newton steps until every gradient entry is below ``tol``. Returns ``start`` if no better.

    L-BFGS alone stalls short of a tight tolerance: its line search sees F only to rounding,
    eps |F|, and PyTorch's L-BFGS keeps a curvature pair only if s^T y > 1e-10, so once the
    per-datum gradient is ~1e-6 it falls back to scaled gradient steps (hundreds of iterations
    for 1e-7 on iris). From there a few Newton steps on the gradient (exact Hessian by autograd;
    44 parameters for the mixture on iris, skipped above 2,000) converge quadratically, to ~1e-15
    on iris; a step is kept only if it shrinks the gradient and keeps F (to 100 ulps: F is a
    mean of terms larger than itself)."""
    sizes, shapes = [t.numel() for t in start], [t.shape for t in start]
    split = lambda x: [part.view(shape) for part, shape in zip(x.split(sizes), shapes, strict=True)]  # noqa: E731
    f = lambda x: objective(*split(x))  # noqa: E731
    x = torch.cat([t.detach().reshape(-1) for t in start]).requires_grad_(True)
    with torch.no_grad():
        initial = f(x)
    if not bool(torch.isfinite(initial)):
        raise ValueError("the M-step objective is not finite at the current parameters; check init")
    rounding = torch.finfo(initial.dtype).eps * max(1.0, abs(float(initial)))
    optimiser = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=100, history_size=50, tolerance_grad=tol, tolerance_change=rounding,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = -f(x)
        loss.backward()
        return loss

    optimiser.step(closure)
    x = x.detach()
    value, grad = _value_and_gradient(f, x)
    for _ in range(5 if x.numel() <= 2000 else 0):  # Newton steps, while they shrink the gradient
        if float(grad.abs().max()) <= tol:
            break
        step, info = torch.linalg.solve_ex(torch.autograd.functional.hessian(f, x, vectorize=True), grad)
        new_value, new_grad = _value_and_gradient(f, x - step)
        if bool(info != 0) or not bool(
            new_grad.abs().max() < grad.abs().max() and new_value >= value - 100 * rounding
        ):
            break
        x, value, grad = x - step, new_value, new_grad
    if float(grad.abs().max()) > tol:
        warnings.warn(
            f"the M-step stopped with gradient {float(grad.abs().max()):.1e} > m_step_tol={tol}", stacklevel=3
        )
    if not bool(torch.isfinite(value)):
        raise ValueError("the M-step diverged (non-finite F); scale the data or increase reg_covar")
    return split(x) if bool(value >= initial) else list(start)


def _value_and_gradient(f: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    value = f(x)
    return value.detach(), torch.autograd.grad(value, x)[0]


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {', '.join(FAMILIES)}")


def _check_init(data: Tensor, init: Any) -> None:
    try:
        owner(init)
    except ValueError:
        raise ValueError(
            f"init must be GMMParams or LinearGaussianParams, got {type(init).__name__}; "
            "build it with gallery.models.gmm.init_params or gallery.models.linear_gaussian.init_params"
        ) from None
    if init.loc.shape[-1] != data.shape[1]:
        raise ValueError(
            f"init is for {init.loc.shape[-1]}-dimensional data but data has {data.shape[1]} columns; "
            "initialise from this data"
        )


__all__ = ["FAMILIES", "VEMResult", "free_energy", "run_vem", "vem_e_step", "vem_m_step"]
