"""An amortised flow guide: a Gaussian from a density network, pushed through L inverse
autoregressive flow layers conditioned on x (Kingma et al. 2016, "Improving variational
inference with inverse autoregressive flow", eq. 10).

    u_n ~ N(f_mu(x_n), diag f_sigma(x_n)^2)                  u: (B, p)
    h_n = f_h(x_n)                                          context: (B, C)
    z_n = T_L(... T_1(u_n; h_n) ...; h_n),   T_l(u)_i = m_li(u_<i, h) + s_li(u_<i, h) u_i

with one density network f = (f_mu, f_sigma, f_h) and, per layer, a MADE network (m_l, s_l)
(Germain et al. 2015) reading the earlier coordinates of u and the context h. Each T_l has a
triangular Jacobian, so

    log q(z_n | x_n) = log N(u_n; f_mu, f_sigma^2) - sum_l sum_i log s_li

which is exact for the sample the guide drew (the transforms cache their input) and found by
inverting the layers one coordinate at a time for any other z. The layers are Pyro's
``ConditionalAffineAutoregressive`` (``pyro.distributions.transforms``); odd layers reverse the
order of the coordinates, so that with L >= 2 every coordinate depends on every other. Orders are
fixed, not drawn at random, so a guide rebuilt in another process has the same structure and a
checkpoint resumes into it.

Each MADE has a linear skip connection from its inputs to its outputs, so a layer's shift can
be exactly linear in the earlier coordinates: one layer then turns the diagonal Gaussian into
any Gaussian with a lower-triangular factor, and the flow can represent any Gaussian q(z | x)
with a mean affine in x. On factor analysis and PPCA, where the exact posterior is such a
Gaussian, its approximation gap is therefore zero (tests/guides/test_flow.py). Pyro clips each
log s to [-5, 3]. :meth:`AmortisedFlow.local_guide`
gives the per-datapoint family beside it for the amortisation gap (:mod:`inference.gaps`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn
from torch.distributions import constraints
from torch.nn.functional import softplus

from gallery.models.common import fresh
from gallery.models.networks import ACTIVATIONS
from guides.amortised import _Amortised
from guides.conv import encoder_network
from guides.mean_field import _MeanField

FLOW_LAYERS = 2  # the command line's --flow-layers default


def make_flow_layers(
    latent_dim: int, context_dim: int, num_layers: int, hidden: Sequence[int], activation: str
) -> nn.ModuleList:
    """``num_layers`` conditional affine autoregressive transforms on (p,) with a (C,) context,
    in alternating fixed orders: identity for even layers, reversed for odd ones. Each starts as
    the identity map (its MADE's output layer zero), so the flow starts at the diagonal Gaussian
    of the density network and training adds dependence only where it raises the ELBO."""
    layers = nn.ModuleList()
    for layer in range(num_layers):
        order = torch.arange(latent_dim)
        order = order.flip(0) if layer % 2 else order
        with warnings.catch_warnings():  # p = 1: Pyro suggests an affine map, which this then is
            warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")
            nonlinearity = ACTIVATIONS[activation]()
            made = ConditionalAutoRegressiveNN(
                latent_dim,
                context_dim,
                list(hidden),
                permutation=order,
                nonlinearity=nonlinearity,
                skip_connections=True,
            )
        with torch.no_grad():  # shift 0 and log scale 0: the layer starts as the identity
            made.layers[-1].weight.zero_()
            made.layers[-1].bias.zero_()
            made.skip_layer.weight.zero_()
        layers.append(ConditionalAffineAutoregressive(made))
    return layers


def push_forward(base: dist.Distribution, layers: nn.ModuleList, context: Tensor) -> dist.Distribution:
    """The distribution of z = T_L(... T_1(u; context) ...) for u ~ ``base`` (batch (B,), event
    (p,)), context (B, C)."""
    if len(layers) == 0:
        return base
    return dist.TransformedDistribution(base, [layer.condition(context) for layer in layers])


class AmortisedFlow(_Amortised):
    """q(z_n | x_n): a diagonal Gaussian from the density network, then ``flow_layers`` inverse
    autoregressive flow layers conditioned on a context f_h(x_n), for the site ``z``.

    :param obs_dim: d, the size of each x_n.
    :param latent_dim: p, the size of each z_n.
    :param hidden: hidden layer sizes of the density network; ``()`` makes it affine in x.
    :param flow_layers: L, the number of flow layers; 0 is :class:`AmortisedNormal`'s diagonal q.
    :param context_dim: C, the size of the context h each layer reads; default 2 p.
    :param flow_hidden: hidden layer sizes of each layer's MADE network; default (10 p,), Pyro's.
    :param activation: of both networks, a key of :data:`gallery.models.networks.ACTIVATIONS`.
    :param input_loc, input_scale: (d,) the network reads (x - input_loc) / input_scale
        (:func:`guides.input_scaling`). Default 0 and 1.
    :param name: the ``pyro.module`` name; default a fresh ``amortised_flow.<i>`` on first use.
    :param architecture: of the density network, ``"mlp"`` or ``"conv"`` (square images).
    """

    BASE_NAME = "amortised_flow"

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        *,
        hidden: Sequence[int] = (),
        flow_layers: int = FLOW_LAYERS,
        context_dim: int | None = None,
        flow_hidden: Sequence[int] | None = None,
        activation: str = "tanh",
        input_loc: Tensor | None = None,
        input_scale: Tensor | None = None,
        name: str | None = None,
        architecture: str = "mlp",
    ):
        super().__init__()
        if latent_dim < 1 or flow_layers < 0:
            raise ValueError(
                f"latent_dim={latent_dim} must be at least 1 and flow_layers={flow_layers} at least 0"
            )
        self._set_input_scaling(obs_dim, input_loc, input_scale)
        self.latent_dim, self.name, self.num_layers = latent_dim, name, flow_layers
        self.context_dim = 2 * latent_dim if context_dim is None else context_dim
        flow_hidden = (10 * latent_dim,) if flow_hidden is None else tuple(flow_hidden)
        self.net = encoder_network(
            obs_dim, 2 * latent_dim + self.context_dim, hidden, activation, architecture
        )
        self.flows = make_flow_layers(latent_dim, self.context_dim, flow_layers, flow_hidden, activation)

    def encode_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The base Gaussian's loc (B, p) and scale (B, p) and the context (B, C) for x: (B, d)."""
        out = self.net(self.standardise(x))  # (B, 2p + C)
        p = self.latent_dim
        return out[..., :p], softplus(out[..., p : 2 * p]), out[..., 2 * p :]

    def encode(self, x: Tensor) -> dist.Distribution:
        """q(z | x) for a batch x: (B, d); batch shape (B,), event shape (p,)."""
        loc, scale, context = self.encode_parts(x)
        return push_forward(dist.Normal(loc, scale).to_event(1), self.flows, context)

    @torch.no_grad()
    def mean(self, x: Tensor, num_samples: int = 256) -> Tensor:
        """(B, p) E_q[z | x] for x: (B, d), averaged over ``num_samples`` draws from a generator
        seeded 0 (the same draws every call; a flow's mean has no closed form)."""
        loc, scale, context = self.encode_parts(x)
        generator = torch.Generator(device=x.device).manual_seed(0)
        eps = torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype, device=loc.device)
        z = loc + scale * eps  # (S, B, p)
        for layer in self.flows:
            z = layer.condition(context)(z)
        return z.mean(0)

    def _sample(self, x: Tensor) -> None:
        pyro.sample("z", self.encode(x))

    def local_guide(self, data: Tensor, *, name: str | None = None) -> LocalFlow:
        """The per-datapoint family beside this guide for the rows of ``data`` (N, d): each row's
        base Gaussian and context are its own parameters, started at the encoder's, pushed
        through a frozen copy of these flow layers."""
        with torch.no_grad():
            loc, scale, context = self.encode_parts(data)
        return LocalFlow(self.flows, init_loc=loc, init_scale=scale, init_context=context, name=name)


class LocalFlow(_MeanField):
    """q(z_n) = T(N(loc_n, diag scale_n^2); context_n): one base Gaussian and one context per
    data point (tables (N, p), (N, p), (N, C) in the param store, sites ``{name}_loc``,
    ``{name}_scale``, ``{name}_context``), through fixed flow layers.

    The family of an :class:`AmortisedFlow` with the encoder's networks f replaced by free
    per-datum values; the layers' weights are held fixed (copied and frozen), so the family
    contains the amortised q for each datum but is not every flow of that architecture.

    :param layers: the flow layers (copied; the copy's weights do not train).
    :param init_loc, init_scale, init_context: (N, p), (N, p), (N, C) starting values.
    :param name: the prefix of its sites; default a fresh ``mean_field.<i>`` on first use.
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        *,
        init_loc: Tensor,
        init_scale: Tensor,
        init_context: Tensor,
        name: str | None = None,
    ):
        super().__init__(init_loc.shape[0], name)
        self.layers = copy.deepcopy(layers).requires_grad_(False)
        self.init_loc, self.init_scale, self.init_context = init_loc, init_scale, init_context
        self.latent_dim = init_loc.shape[1]

    def _sample(self, data: Tensor, ind: Tensor, prefix: str) -> None:
        loc = pyro.param(f"{prefix}_loc", lambda: fresh(self.init_loc))
        scale = pyro.param(f"{prefix}_scale", lambda: fresh(self.init_scale), constraint=constraints.positive)
        context = pyro.param(f"{prefix}_context", lambda: fresh(self.init_context))
        base = dist.Normal(loc[ind], scale[ind]).to_event(1)
        pyro.sample("z", push_forward(base, self.layers, context[ind]))


__all__ = ["FLOW_LAYERS", "AmortisedFlow", "LocalFlow", "make_flow_layers", "push_forward"]
