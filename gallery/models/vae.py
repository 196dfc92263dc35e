"""The variational autoencoder's generative model: a neural-network decoder (Kingma and Welling
2014; Rezende et al. 2014).

Generative process, for each data point n = 1..N:

    z_n ~ N(0, I_p)                                  z: (N, p)
    x_n | z_n ~ N(f(z_n; lambda), sigma^2 I_d)       Gaussian likelihood, sigma^2: ()
    x_n | z_n ~ Bernoulli(sigmoid(f(z_n; lambda)))   Bernoulli likelihood, for binary x
    x_n | z_n ~ CB(sigmoid(f(z_n; lambda)))          continuous Bernoulli, for x in [0, 1]

The continuous Bernoulli (Loaiza-Ganem and Cunningham 2019, eq. 2) is the Bernoulli's form
normalised on [0, 1], the density for grey pixels:
p(x | lam) = C(lam) lam^x (1 - lam)^(1 - x), C(lam) = 2 atanh(1 - 2 lam) / (1 - 2 lam) (2 at 1/2).

f is an MLP, or for square images transposed convolutions (:mod:`gallery.models.conv`)
(:class:`Decoder`), registered with ``pyro.module`` as ``vae.decoder`` (the model's
``name=`` and ``.decoder``; a new decoder object replaces the sites of the old one); sigma^2 is learned as the
decoder's parameter ``log_noise_variance`` (so the whole model travels in one state dict), or
fixed. With ``hidden=()`` f(z) = A z + b is affine and the
Gaussian model is probabilistic PCA with loading A, loc b and noise sigma^2 (Lucas et al. 2019):
:func:`as_ppca` reads those parameters back for the exact log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from gallery.models.common import claim, data_plate, resolve_device, resolve_sizes, same_device
from gallery.models.conv import ARCHITECTURES, conv_decoder, image_side
from gallery.models.linear_gaussian import LinearGaussianParams
from gallery.models.networks import ACTIVATIONS, check_activation, follow_data, mlp

LIKELIHOODS = ("gaussian", "bernoulli", "continuous-bernoulli")
LOGIT_LIKELIHOODS = ("bernoulli", "continuous-bernoulli")  # f is the logits
NAME, LATENT, PREFIX = "vae", "z", "vae"  # see gallery.models.protocol


class Decoder(nn.Module):
    """f(z; lambda) and the likelihood it parameterises.

    :param obs_dim: d (first, as in every network constructor).
    :param latent_dim: p.
    :param hidden: hidden layer sizes of the MLP; ``()`` is affine, f(z) = A z + b (PPCA);
        default the command line's (128,).
    :param activation: a key of ``ACTIVATIONS``.
    :param likelihood: ``"gaussian"`` (f is the mean), ``"bernoulli"`` or
        ``"continuous-bernoulli"`` (f is the logits).
    :param noise_variance: a fixed sigma^2 for the Gaussian likelihood; ``None`` learns it, as
        log sigma^2 (unconstrained), starting at ``init_noise_variance``.
    :param architecture: ``"mlp"``, or ``"conv"`` for rows that are square images: ``hidden``
        MLP layers to a feature map, then transposed convolutions (:mod:`gallery.models.conv`).
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        *,
        hidden: Sequence[int] = (128,),
        activation: str = "relu",
        likelihood: str = "gaussian",
        noise_variance: float | None = None,
        init_noise_variance: float = 1.0,
        architecture: str = "mlp",
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={likelihood!r} is not one of {', '.join(LIKELIHOODS)}")
        check_activation(activation)
        for name, value in (("noise_variance", noise_variance), ("init_noise_variance", init_noise_variance)):
            if value is not None and not (value > 0 and value < float("inf")):
                raise ValueError(f"{name}={value} must be a positive, finite number")
        if likelihood != "gaussian" and noise_variance is not None:
            raise ValueError(f"noise_variance is for the Gaussian likelihood; drop it for {likelihood}")
        if latent_dim < 1 or obs_dim < 1:
            raise ValueError(f"latent_dim={latent_dim} and obs_dim={obs_dim} must be at least 1")
        self.latent_dim, self.obs_dim, self.likelihood = latent_dim, obs_dim, likelihood
        self.fixed_noise_variance, self.init_noise_variance = noise_variance, init_noise_variance
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        self.architecture = architecture
        if architecture == "conv":  # the last module is then the per-pixel output layer
            self.net = conv_decoder(latent_dim, image_side(obs_dim), hidden, activation)
        else:
            self.net = mlp(latent_dim, obs_dim, hidden, activation)
        if likelihood == "gaussian" and noise_variance is None:
            self.log_noise_variance = nn.Parameter(torch.tensor(math.log(init_noise_variance)))
        else:
            self.log_noise_variance = None

    @property
    def linear(self) -> bool:
        return len(self.net) == 1

    def forward(self, z: Tensor) -> Tensor:
        """(..., p) -> (..., d): the Gaussian mean, or the (continuous) Bernoulli logits."""
        return self.net(z)

    def noise_variance(self) -> Tensor:
        """sigma^2, (): learned or fixed."""
        if self.likelihood != "gaussian":
            raise ValueError(f"a {self.likelihood} decoder has no noise variance")
        if self.log_noise_variance is not None:
            return self.log_noise_variance.exp()
        return self.net[-1].weight.new_tensor(self.fixed_noise_variance)

    def likelihood_dist(self, z: Tensor) -> dist.Distribution:
        """p(x | z) with batch shape z.shape[:-1] and event shape (d,)."""
        out = self(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        if self.likelihood == "continuous-bernoulli":
            return dist.ContinuousBernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.noise_variance().sqrt()).to_event(1)

    def mean(self, z: Tensor) -> Tensor:
        """(..., p) -> (..., d): E[x | z], the image the decoder draws for z (for the continuous
        Bernoulli not sigmoid f(z): its mean is lam / (2 lam - 1) + 1 / (2 atanh(1 - 2 lam)))."""
        out = self(z)
        if self.likelihood == "gaussian":
            return out
        if self.likelihood == "bernoulli":
            return out.sigmoid()
        return dist.ContinuousBernoulli(logits=out).mean


def model(
    data: Tensor | None = None,
    *,
    decoder: Decoder,
    num_data: int | None = None,
    name: str = PREFIX,
    subsample: Tensor | None = None,
    subsample_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The VAE: ``z_n ~ N(0, I_p)``, ``x_n ~ p(x | f(z_n))``.

    :param data: (N, d) observations, or None to sample ``num_data`` points.
    :param decoder: the :class:`Decoder` f; moved to the data's dtype and device on its first call
        (a later mismatch is refused); registered as
        ``{name}.decoder``, replacing the sites of any other decoder registered there.
    :param subsample: (B,) indices of the minibatch; or ``subsample_size`` to draw them.
    :returns: (..., B, d) the observed or sampled x of the subsample.
    """
    num_data, _ = resolve_sizes(data, num_data, decoder.obs_dim)
    device = resolve_device(data, device)
    if data is not None:
        follow_data(decoder, data)  # on its first call; a later mismatch is refused
    weight = decoder.net[-1].weight
    if not same_device(weight.device, device):
        raise ValueError(
            f"the decoder's weights are on {weight.device} but device={device}; sample on its device"
        )
    claim(f"{name}.decoder", decoder)
    pyro.module(f"{name}.decoder", decoder)
    # the prior's constants, not made from a parameter (``render_model`` would draw decoder -> z)
    zeros = torch.zeros(decoder.latent_dim, dtype=weight.dtype, device=weight.device)
    with data_plate(num_data, subsample, subsample_size, device) as ind:
        z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))  # (..., B, p)
        obs = None if data is None else data[ind]
        return pyro.sample("x", decoder.likelihood_dist(z), obs=obs)


def as_ppca(decoder: Decoder) -> LinearGaussianParams:
    """The PPCA parameters (loc b, loading A, sigma^2) of an affine, Gaussian decoder, detached."""
    if not decoder.linear or decoder.likelihood != "gaussian":
        raise ValueError("only an affine decoder with a Gaussian likelihood is PPCA (hidden=(), gaussian)")
    layer = decoder.net[0]
    noise = decoder.noise_variance().detach().clone()
    return LinearGaussianParams(layer.bias.detach().clone(), layer.weight.detach().clone(), noise)


@torch.no_grad()
def sample(decoder: Decoder, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
    """(num_samples, d) the decoder's mean image E[x | z] (:meth:`Decoder.mean`) for prior draws z."""
    weight = decoder.net[-1].weight
    z = torch.randn(num_samples, decoder.latent_dim, generator=generator, dtype=weight.dtype)
    return decoder.mean(z.to(weight.device))


__all__ = ["ACTIVATIONS", "LIKELIHOODS", "LOGIT_LIKELIHOODS", "Decoder", "as_ppca", "model", "sample"]
