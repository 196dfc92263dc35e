"""Amortised guides: a density network maps each x_n to the parameters of its q.

    q(z_n | x_n) = N(f_mu(x_n), f_Sigma(x_n))        diagonal or full (Cholesky) covariance
    q(c_n | x_n) = Categorical(softmax(f_logits(x_n)))

The network is registered with ``pyro.module`` under the guide's ``name`` (default: a fresh
``amortised_normal.<i>`` on first use), claimed on every call, so a new guide never trains in
another's place. The network's weights are shared by all data points, so the number of variational parameters
does not grow with N, and a new x gets its q from one forward pass.

The weights follow the data: built as torch builds them (float32, CPU), they move to the dtype
and device of the data on the first call, and a later mismatch is refused.

The network reads x standardised by fixed ``input_loc`` and ``input_scale`` (d,), set from the
training data. Without it an affine encoder on data far from 0 (iris in cm, digits in 0-16) is
badly conditioned: its bias and weights move together, and on PPCA SVI stalled near the p = 1
optimum (iris: -3.03 against the closed form's -2.6998 nats per datum after 3,000 steps;
standardised: -2.69984).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from torch.nn.functional import softplus

from gallery.models.common import claim, data_plate, free_name
from gallery.models.networks import follow_data, mlp
from guides.conv import encoder_network

COVARIANCES = ("diag", "full")
SCALE_FLOOR = 0.1  # input scales below this fraction of the largest are raised to it


def input_scaling(data: Tensor) -> dict[str, Tensor]:
    """``{"input_loc": mean, "input_scale": std}`` of the columns of ``data`` (N, d), the keyword
    arguments that make an amortised guide read standardised x."""
    return {"input_loc": data.mean(0), "input_scale": data.std(0, correction=0)}


def full_covariance_normal(loc: Tensor, scale_tril: Tensor) -> dist.TransformedDistribution:
    """N(loc, L L^T) as z = loc + L eps, eps ~ N(0, I), with the transform caching eps.

    The density of its own sample is then log N(eps; 0, I) - sum log diag L, exactly, instead of
    a triangular solve of L against z - loc. With an ill-conditioned L from a network early in
    training that solve loses all precision and returns huge finite log q values, which the
    optimiser then exploits (seen on the digits: ELBO estimates of +1e160 within 5 steps).
    Value and gradient are otherwise those of ``MultivariateNormal(loc, scale_tril=L)``."""
    base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
    return dist.TransformedDistribution(base, [CholeskyAffine(loc, scale_tril)])


class CholeskyAffine(Transform):
    """x -> loc + scale_tril @ x for batches: loc (..., p), scale_tril (..., p, p) lower
    triangular with a positive diagonal. Caches its last (x, y) pair."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: Tensor, scale_tril: Tensor):
        super().__init__(cache_size=1)
        self.loc, self.scale_tril = loc, scale_tril

    def _call(self, x: Tensor) -> Tensor:
        return self.loc + (self.scale_tril @ x.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        shifted = (y - self.loc).unsqueeze(-1)
        return torch.linalg.solve_triangular(self.scale_tril, shifted, upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_det.expand(torch.broadcast_shapes(log_det.shape, x.shape[:-1]))


class _Amortised(nn.Module):
    """Checks the data against the network, registers it, and samples the site for the rows of
    the model's data plate from the encoded x."""

    BASE_NAME = "amortised"

    def _prefix(self) -> str:
        """The name of this guide's sites, given on first use, and claimed."""
        if self.name is None:
            self.name = free_name(self.BASE_NAME)
        claim(self.name, self)
        return self.name

    def _set_input_scaling(self, obs_dim: int, input_loc: Tensor | None, input_scale: Tensor | None) -> None:
        loc = torch.zeros(obs_dim) if input_loc is None else torch.as_tensor(input_loc).detach().clone()
        scale = torch.ones(obs_dim) if input_scale is None else torch.as_tensor(input_scale).detach().clone()
        if loc.shape != (obs_dim,) or scale.shape != (obs_dim,):
            raise ValueError(
                f"input_loc and input_scale must have shape ({obs_dim},), got {tuple(loc.shape)} "
                f"and {tuple(scale.shape)}"
            )
        if not bool(torch.isfinite(loc).all() & torch.isfinite(scale).all()):
            raise ValueError("input_loc and input_scale must be finite")
        floor = SCALE_FLOOR * scale.max()  # a near-constant column is not blown up (module docstring)
        scale = torch.where(scale > floor, scale, floor if floor > 0 else torch.ones_like(scale))
        self.register_buffer("input_loc", loc)
        self.register_buffer("input_scale", scale)

    def standardise(self, x: Tensor) -> Tensor:
        """(..., d) x -> (x - input_loc) / input_scale, what the network reads."""
        return (x - self.input_loc) / self.input_scale

    def forward(
        self,
        data: Tensor | None = None,
        *,
        subsample: Tensor | None = None,
        subsample_size: int | None = None,
        **model_kwargs,
    ) -> None:
        if data is None:
            raise ValueError(f"{type(self).__name__} needs the data (N, D) to encode; pass data=")
        follow_data(self, data)  # on its first call; a later mismatch is refused
        pyro.module(self._prefix(), self)
        with data_plate(data.shape[0], subsample, subsample_size, data.device) as ind:
            self._sample(data[ind])

    def _sample(self, x: Tensor) -> None:
        raise NotImplementedError


class AmortisedNormal(_Amortised):
    """q(z_n | x_n) = N(f_mu(x_n), f_Sigma(x_n)) for the site ``z``.

    :param obs_dim: d, the size of each x_n.
    :param latent_dim: p, the size of each z_n.
    :param hidden: hidden layer sizes of the encoder; ``()`` makes it affine in x, which is enough
        to represent the exact posterior of factor analysis and PPCA (with ``covariance="full"``).
    :param covariance: ``"diag"`` (softplus of p outputs) or ``"full"`` (p(p+1)/2 outputs filling
        a lower-triangular scale_tril with a softplus diagonal).
    :param activation: between hidden layers, a key of :data:`gallery.models.networks.ACTIVATIONS`.
    :param input_loc, input_scale: (d,) the network reads (x - input_loc) / input_scale; use the
        training data's mean and standard deviation (:func:`input_scaling`). Default 0 and 1.
    :param name: the ``pyro.module`` name; default a fresh ``amortised_normal.<i>`` on first use.
    :param architecture: ``"mlp"``, or ``"conv"`` for rows that are square images
        (:func:`guides.conv.encoder_network`).
    """

    BASE_NAME = "amortised_normal"

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        *,
        hidden: Sequence[int] = (),
        covariance: str = "diag",
        activation: str = "tanh",
        input_loc: Tensor | None = None,
        input_scale: Tensor | None = None,
        name: str | None = None,
        architecture: str = "mlp",
    ):
        super().__init__()
        self._set_input_scaling(obs_dim, input_loc, input_scale)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance={covariance!r} is not one of {', '.join(COVARIANCES)}")
        self.latent_dim, self.covariance, self.name = latent_dim, covariance, name
        num_scale = latent_dim if covariance == "diag" else latent_dim * (latent_dim + 1) // 2
        self.net = encoder_network(obs_dim, latent_dim + num_scale, hidden, activation, architecture)
        self.register_buffer("_tril_rows", torch.tril_indices(latent_dim, latent_dim)[0], persistent=False)
        self.register_buffer("_tril_cols", torch.tril_indices(latent_dim, latent_dim)[1], persistent=False)

    def encode(self, x: Tensor) -> dist.Distribution:
        """q(z | x) for a batch x: (B, d); batch shape (B,), event shape (p,)."""
        out = self.net(self.standardise(x))  # (B, p + num_scale)
        loc, raw = out[..., : self.latent_dim], out[..., self.latent_dim :]
        if self.covariance == "diag":
            return dist.Normal(loc, softplus(raw)).to_event(1)
        tril = raw.new_zeros(*raw.shape[:-1], self.latent_dim, self.latent_dim)
        tril[..., self._tril_rows, self._tril_cols] = raw
        diag = tril.diagonal(dim1=-2, dim2=-1)
        scale_tril = tril - torch.diag_embed(diag) + torch.diag_embed(softplus(diag))
        return full_covariance_normal(loc, scale_tril)

    def mean(self, x: Tensor) -> Tensor:
        """(B, p) the mean f_mu(x) of q(z | x) for a batch x: (B, d)."""
        return self.net(self.standardise(x))[..., : self.latent_dim]

    def _sample(self, x: Tensor) -> None:
        pyro.sample("z", self.encode(x))


class AmortisedCategorical(_Amortised):
    """q(c_n | x_n) = Categorical(softmax(f(x_n))) for the mixture's site ``c``, enumerated in
    parallel so that ``TraceEnum_ELBO`` takes the expectation over c exactly.

    :param obs_dim: d.
    :param num_components: K.
    :param hidden: hidden layer sizes; ``()`` is multinomial logistic regression on x.
    :param activation: as for :class:`AmortisedNormal`.
    :param input_loc, input_scale: (d,) as for :class:`AmortisedNormal`.
    :param name: the ``pyro.module`` name; default a fresh ``amortised_categorical.<i>`` on first use.
    """

    BASE_NAME = "amortised_categorical"

    def __init__(
        self,
        obs_dim: int,
        num_components: int,
        *,
        hidden: Sequence[int] = (),
        activation: str = "tanh",
        input_loc: Tensor | None = None,
        input_scale: Tensor | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self._set_input_scaling(obs_dim, input_loc, input_scale)
        self.name = name
        self.net = mlp(obs_dim, num_components, hidden, activation)

    def _sample(self, x: Tensor) -> None:
        logits = self.net(self.standardise(x))  # (B, K)
        pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
