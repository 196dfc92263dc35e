"""Mean-field guides: one set of variational parameters per data point.

    q(z_1..N) = prod_n N(z_n; loc_n, diag(scale_n^2))       loc, scale: (N, p)
    q(c_1..N) = prod_n Categorical(c_n; softmax(logits_n))  logits: (N, K)

The per-datum tables live in Pyro's param store at their full size N and are indexed by the
plate's subsample, so minibatching updates only the rows of the batch.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor
from torch.distributions import constraints

from gallery.common import data_plate, resolve_device


def _require_data(data: Tensor | None, guide: str) -> Tensor:
    if data is None:
        raise ValueError(f"{guide} needs the data (N, D) it describes; pass data=")
    return data


class MeanFieldNormal:
    """q(z_n) = N(loc_n, diag(scale_n^2)) for the site ``z`` of a continuous-latent model.

    :param num_data: N, the number of rows of the data this guide will see.
    :param latent_dim: p, the size of each z_n.
    :param init_scale: the starting standard deviation of every factor.
    """

    def __init__(self, num_data: int, latent_dim: int, *, init_scale: float = 1.0, name: str = "mean_field"):
        self.num_data, self.latent_dim, self.init_scale, self.name = num_data, latent_dim, init_scale, name

    def __call__(
        self,
        data: Tensor | None = None,
        *,
        subsample: Tensor | None = None,
        subsample_size: int | None = None,
        **model_kwargs,
    ) -> None:
        data = _require_data(data, type(self).__name__)
        if data.shape[0] != self.num_data:
            raise ValueError(f"guide built for num_data={self.num_data}, data has {data.shape[0]} rows")
        shape = (self.num_data, self.latent_dim)
        loc = pyro.param(f"{self.name}_loc", lambda: data.new_zeros(shape))
        scale = pyro.param(
            f"{self.name}_scale",
            lambda: data.new_full(shape, self.init_scale),
            constraint=constraints.positive,
        )
        with data_plate(self.num_data, subsample, subsample_size, resolve_device(data, None)) as ind:
            pyro.sample("z", dist.Normal(loc[ind], scale[ind]).to_event(1))

    def distribution(self, ind: Tensor | None = None) -> dist.Distribution:
        """q(z_n) of the rows ``ind`` (default all), batch shape (B,), from the param store."""
        loc, scale = pyro.param(f"{self.name}_loc"), pyro.param(f"{self.name}_scale")
        ind = slice(None) if ind is None else ind
        return dist.Normal(loc[ind], scale[ind]).to_event(1)


class MeanFieldCategorical:
    """q(c_n) = Categorical(softmax(logits_n)) for the assignment site ``c`` of the mixture,
    enumerated in parallel so that ``TraceEnum_ELBO`` takes the expectation over c exactly.

    :param num_data: N, the number of rows of the data this guide will see.
    :param num_components: K.
    """

    def __init__(self, num_data: int, num_components: int, *, name: str = "mean_field"):
        self.num_data, self.num_components, self.name = num_data, num_components, name

    def __call__(
        self,
        data: Tensor | None = None,
        *,
        subsample: Tensor | None = None,
        subsample_size: int | None = None,
        **model_kwargs,
    ) -> None:
        data = _require_data(data, type(self).__name__)
        if data.shape[0] != self.num_data:
            raise ValueError(f"guide built for num_data={self.num_data}, data has {data.shape[0]} rows")
        logits = pyro.param(f"{self.name}_logits", lambda: data.new_zeros(self.num_data, self.num_components))
        with data_plate(self.num_data, subsample, subsample_size, resolve_device(data, None)) as ind:
            pyro.sample("c", dist.Categorical(logits=logits[ind]), infer={"enumerate": "parallel"})


__all__ = ["MeanFieldCategorical", "MeanFieldNormal"]
