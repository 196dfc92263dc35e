"""What diverged in a VAE run, for the error message: the extremes that the encoder's scales and
the decoder's logits (or mean) reach during SVI, kept on the device by forward hooks, read only
when the loop has found a non-finite loss or parameter.

By then the parameters are usually NaN (the step that overflowed updated them all), so the
hooks record as they go: the smallest encoder scale sigma(x) and the largest |f(z)| of the
decoder, with ``fmin``/``fmax`` so that NaN does not erase what came before it. No host sync
per step: two reductions each forward pass, read once, at the failure.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from gallery.models import vae
from guides.amortised import AmortisedNormal

SCALE_COLLAPSED = 1e-4  # an encoder sigma(x) below this: log q(z | x) is large and steep
LOGIT_LARGE = 50.0  # a decoder logit past this: sigmoid saturates in float32


class DivergenceWatch:
    """Forward hooks on ``decoder`` and, for an amortised guide, its encoder network."""

    def __init__(self, decoder: vae.Decoder, guide, lr: float):
        self.lr, self.decoder = lr, decoder
        weight = decoder.net[-1].weight
        self.smallest_scale = torch.full((), math.inf, device=weight.device)
        self.largest_output = torch.zeros((), device=weight.device)
        self.handles = [decoder.net.register_forward_hook(self._decoded)]
        if isinstance(guide, AmortisedNormal) and guide.covariance == "diag":
            self.latent_dim = guide.latent_dim
            self.handles.append(guide.net.register_forward_hook(self._encoded))

    def _decoded(self, module: nn.Module, inputs, output: Tensor) -> None:
        with torch.no_grad():
            largest = output.detach().abs().amax().to(self.largest_output.dtype)
            torch.fmax(self.largest_output, largest, out=self.largest_output)

    def _encoded(self, module: nn.Module, inputs, output: Tensor) -> None:
        with torch.no_grad():
            scale = softplus(output.detach()[..., self.latent_dim :]).amin().to(self.smallest_scale.dtype)
            torch.fmin(self.smallest_scale, scale, out=self.smallest_scale)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def hint(self) -> str:
        """What went extreme, and the flag to change (read from the device: once, at failure)."""
        scale, output = float(self.smallest_scale), float(self.largest_output)
        change = f"lower --lr (now {self.lr:g}; 0.001 is Pyro's VAE example's)"
        if scale < SCALE_COLLAPSED:
            return (
                f"in this VAE an encoder scale sigma(x) fell to {scale:.2g} (log q(z|x) overflows as it "
                f"collapses); {change}"
            )
        if self.decoder.likelihood != "gaussian" and not output < LOGIT_LARGE:
            return (
                f"in this VAE a decoder logit reached {output:.3g} (the pixel probabilities saturate); "
                f"{change}"
            )
        if self.decoder.likelihood == "gaussian":
            return (
                f"in this VAE the decoder's mean reached {output:.3g} or its noise variance collapsed; "
                f"{change}, or fix it with --noise-variance"
            )
        return f"in this VAE the encoder's or decoder's weights overflowed; {change}"


__all__ = ["DivergenceWatch"]
