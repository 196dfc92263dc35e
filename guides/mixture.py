"""Guides for models with a discrete c and a continuous z | c in one data plate (the mixtures
of factor analysers and of PPCA, :mod:`gallery.models.mfa`): q(c_n) q(z_n | c_n), with c
enumerated in parallel, so ``TraceEnum_ELBO`` takes the expectation over c exactly and z is
drawn for every value of c at once, batch (K, B).

    mean-field:  q(c_n) = Cat(softmax(logits_n)),  q(z_n | c_n = k) = N(loc_nk, diag(scale_nk^2))
                 logits: (N, K), loc, scale: (N, K, p)
    amortised:   the same from a network of x_n with K heads: K logits and K (p + p) outputs
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import Tensor
from torch.distributions import constraints
from torch.nn.functional import softplus

from gallery.models.networks import mlp
from guides.amortised import _Amortised
from guides.mean_field import _MeanField


def sample_mixture(logits: Tensor, loc: Tensor, scale: Tensor) -> None:
    """Sample c ~ Cat(logits) (B, K), enumerated, then z | c ~ N(loc[:, c], diag(scale[:, c]^2))
    from the per-component tables (B, K, p), indexed by the (possibly enumerated) c."""
    c = pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
    rows = torch.arange(logits.shape[0], device=logits.device)
    pick = lambda table: Vindex(table.transpose(0, 1))[c, rows]  # noqa: E731  (..., B, p)
    pyro.sample("z", dist.Normal(pick(loc), pick(scale)).to_event(1))


class MeanFieldMixture(_MeanField):
    """Per-datum q(c_n) and per-datum, per-component Gaussian q(z_n | c_n).

    :param num_data: N; :param num_components: K; :param latent_dim: p.
    :param init_logits: (N, K); :param init_loc: (N, K, p); :param init_scale: (N, K, p) or a
        number. Defaults: uniform, 0, 1.
    """

    def __init__(
        self,
        num_data: int,
        num_components: int,
        latent_dim: int,
        *,
        init_logits: Tensor | None = None,
        init_loc: Tensor | None = None,
        init_scale: Tensor | float = 1.0,
        name: str | None = None,
    ):
        super().__init__(num_data, name)
        self.shape = (num_data, num_components, latent_dim)
        self.init_logits, self.init_loc, self.init_scale = init_logits, init_loc, init_scale

    def _sample(self, data: Tensor, ind: Tensor, prefix: str) -> None:
        new = lambda value, shape: (  # noqa: E731
            lambda: torch.as_tensor(value, dtype=data.dtype, device=data.device).expand(shape).clone()
        )
        logits = pyro.param(
            f"{prefix}_logits", new(0.0 if self.init_logits is None else self.init_logits, self.shape[:2])
        )
        loc = pyro.param(f"{prefix}_loc", new(0.0 if self.init_loc is None else self.init_loc, self.shape))
        scale = pyro.param(
            f"{prefix}_scale", new(self.init_scale, self.shape), constraint=constraints.positive
        )
        sample_mixture(logits[ind], loc[ind], scale[ind])


class AmortisedMixture(_Amortised):
    """q(c_n | x_n) q(z_n | x_n, c_n) from one density network with K heads: its output
    (K + K (p + p),) is split into the logits of c and, per component, the loc and the
    softplus scale of a diagonal Gaussian q(z | x, c = k).

    :param obs_dim: d; :param num_components: K; :param latent_dim: p.
    :param hidden: hidden sizes (``()``: affine in x); :param activation: by name, as for
        :class:`AmortisedNormal`.
    :param input_loc, input_scale: (d,) the network reads standardised x (:func:`input_scaling`).
    """

    BASE_NAME = "amortised_mixture"

    def __init__(
        self,
        obs_dim: int,
        num_components: int,
        latent_dim: int,
        *,
        hidden: Sequence[int] = (),
        activation: str = "tanh",
        input_loc: Tensor | None = None,
        input_scale: Tensor | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self._set_input_scaling(obs_dim, input_loc, input_scale)
        self.name, self.num_components, self.latent_dim = name, num_components, latent_dim
        self.net = mlp(obs_dim, num_components * (1 + 2 * latent_dim), hidden, activation)

    def _sample(self, x: Tensor) -> None:
        out = self.net(self.standardise(x))  # (B, K (1 + 2p))
        logits, heads = out[:, : self.num_components], out[:, self.num_components :]
        heads = heads.reshape(len(x), self.num_components, 2 * self.latent_dim)  # (B, K, 2p)
        loc, raw = heads[..., : self.latent_dim], heads[..., self.latent_dim :]
        sample_mixture(logits, loc, softplus(raw))


__all__ = ["AmortisedMixture", "MeanFieldMixture", "sample_mixture"]
