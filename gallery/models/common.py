"""Pieces shared by every model and guide: sizes, devices, the data plate, parameter names
(:func:`claim`), and the Gaussian KL."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Self

import pyro
import torch
from torch import Tensor


class TensorFields:
    """For a model's frozen dataclass of parameter tensors (a field may be ``None``): move, cast and
    (de)serialise all of them together."""

    def to(self, *args, **kwargs) -> Self:
        """Move every tensor, as ``Tensor.to``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: None if t is None else t.to(*args, **kwargs) for k, t in moved.items()})

    def float(self) -> Self:
        return self.to(torch.float32)

    def double(self) -> Self:
        return self.to(torch.float64)

    def as_dict(self) -> dict[str, Tensor]:
        """The tensors by field name, in field order; fields that are ``None`` are left out."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, tensors: dict[str, Tensor]) -> Self:
        """The parameters :meth:`as_dict` gave."""
        return cls(**tensors)


def resolve_sizes(
    data: Tensor | None,
    num_data: int | None,
    obs_dim: int | None,
) -> tuple[int, int]:
    """Sizes come from the data when there is data, else from the arguments.

    Returns ``(num_data, obs_dim)``. Raises ``ValueError`` when they disagree or are missing.
    """
    if data is None:
        if num_data is None or obs_dim is None:
            raise ValueError("with data=None pass num_data= and obs_dim= so the model knows what to sample")
        return int(num_data), int(obs_dim)
    check_tensor(data)
    if data.dim() != 2:
        raise ValueError(
            f"data must be 2-D (num_data, obs_dim); got shape {tuple(data.shape)}: "
            "reshape it so that each row is one observation"
        )
    if num_data is not None and num_data != data.shape[0]:
        raise ValueError(f"num_data={num_data} but data has {data.shape[0]} rows; drop num_data")
    if obs_dim is not None and obs_dim != data.shape[1]:
        raise ValueError(f"obs_dim={obs_dim} but data has {data.shape[1]} columns; drop obs_dim")
    return data.shape[0], data.shape[1]


def check_tensor(data: object) -> None:
    """Refuse data that is not a tensor (a numpy array, a list) in one line: a model and its guide
    run every step, so the conversion belongs before the fit, once."""
    if not isinstance(data, Tensor):
        raise TypeError(
            f"data is a {type(data).__module__}.{type(data).__qualname__}, not a torch.Tensor; convert it "
            "once before fitting: data = torch.as_tensor(data)"
        )


def resolve_device(data: Tensor | None, device: torch.device | str | None) -> torch.device:
    """The device of the data wins; ``device=`` is for sampling with ``data=None``."""
    if data is not None:
        return data.device
    return torch.device(device) if device is not None else torch.device("cpu")


def data_plate(
    num_data: int,
    subsample: Tensor | None,
    subsample_size: int | None,
    device: torch.device,
) -> pyro.plate:
    """The one plate over data points, named ``"data"`` in every model and guide.

    Model and guide must index their per-datum tensors with the indices this plate returns:
    inside ``Trace_ELBO`` the model's plate replays the guide's indices, so both see the same
    subsample whether it is passed in (``subsample=``) or drawn here (``subsample_size=``).
    """
    return pyro.plate("data", num_data, subsample_size=subsample_size, subsample=subsample, device=device)


def same_device(first: torch.device | str, second: torch.device | str) -> bool:
    """Whether two device names are one device: ``cuda`` means the current GPU, so it is
    ``cuda:0`` when GPU 0 is current (``torch.device`` compares them unequal)."""
    first, second = torch.device(first), torch.device(second)
    if first.type != second.type:
        return False
    if first.type != "cuda":
        return True
    index = lambda device: torch.cuda.current_device() if device.index is None else device.index  # noqa: E731
    return index(first) == index(second)


def check_init(init_tensor: Tensor, data: Tensor | None) -> None:
    """Refuse an ``init`` in another dtype or on another device than the data, in one line."""
    if data is None or (init_tensor.dtype == data.dtype and same_device(init_tensor.device, data.device)):
        return
    raise ValueError(
        f"init is {init_tensor.dtype} on {init_tensor.device} but the data is {data.dtype} on "
        f"{data.device}; pass init.to(data.dtype) (or .to(data.device))"
    )


def fresh(tensor: Tensor) -> Tensor:
    """A detached copy for Pyro's param store, which would otherwise adopt the caller's ``init``
    tensor itself as the parameter and train it in place."""
    return tensor.detach().clone()


def gaussian_kl(loc_q: Tensor, scale_tril_q: Tensor, loc_p: Tensor, scale_tril_p: Tensor) -> Tensor:
    """KL(N(loc_q, S_q) || N(loc_p, S_p)) for batches of k-dim Gaussians (the lecture formula):

        1/2 [ tr(S_p^{-1} S_q) + (mu_p - mu_q)^T S_p^{-1} (mu_p - mu_q) - k + ln(|S_p| / |S_q|) ]

    computed from Cholesky factors by triangular solves. Shapes (..., k) and (..., k, k)."""
    k = loc_q.shape[-1]
    batch = torch.broadcast_shapes(
        loc_q.shape[:-1], loc_p.shape[:-1], scale_tril_q.shape[:-2], scale_tril_p.shape[:-2]
    )
    lp, lq = scale_tril_p.expand(*batch, k, k), scale_tril_q.expand(*batch, k, k)
    diff = (loc_p - loc_q).expand(*batch, k).unsqueeze(-1)  # (..., k, 1)
    trace = torch.linalg.solve_triangular(lp, lq, upper=False).pow(2).sum((-2, -1))
    maha = torch.linalg.solve_triangular(lp, diff, upper=False).pow(2).sum((-2, -1))
    log_det_p = 2 * scale_tril_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det_q = 2 * scale_tril_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + maha - k + log_det_p - log_det_q)


# Parameter names ----------------------------------------------------------------------------
#
# Every pyro.param / pyro.module site is named under a prefix (``gmm.loc``, ``vae.decoder$$$...``,
# ``ppca.guide_loc``), and the object the sites were created from (an ``init``, a guide, a
# decoder) claims its prefix: when another object claims it, the old sites are dropped, so an
# explicit ``init=`` or a new guide always starts from its own values.

_CLAIMS: dict[str, Callable[[], object]] = {}  # prefix -> weak reference to the sites' source


SEPARATORS = (".", "$$$", "_")  # gmm.loc, vae.decoder$$$net.0.weight, mean_field.0_loc


def _under(key: str, prefix: str) -> bool:
    """Whether param-store ``key`` is a site under ``prefix`` (``prefix.x``, ``prefix$$$x`` or
    ``prefix_x``, the mean-field guides' tables)."""
    return any(key.startswith(prefix + separator) for separator in SEPARATORS)


def drop(prefix: str) -> None:
    """Delete the param-store sites under ``prefix``, except those under a longer prefix that
    something else claimed (a guide named ``gmm.guide`` keeps its sites when ``gmm`` is
    re-created), and forget who claimed ``prefix``."""
    _CLAIMS.pop(prefix, None)
    store = pyro.get_param_store()
    nested = [other for other in _CLAIMS if _under(other, prefix)]
    for key in [key for key in store.keys() if _under(key, prefix)]:
        if not any(_under(key, other) or key == other for other in nested):
            del store[key]


def claim(prefix: str, owner: object) -> None:
    """Make ``owner`` the source of the sites under ``prefix``: a no-op when it already is (one
    dict look-up, every step), else the sites another object created are dropped so that
    ``pyro.param`` creates them again from ``owner``."""
    held = _CLAIMS.get(prefix)
    if held is not None and held() is owner:
        return
    drop(prefix)
    try:
        _CLAIMS[prefix] = weakref.ref(owner)
    except TypeError:  # not weakly referenceable: hold it
        _CLAIMS[prefix] = lambda: owner


def release(prefix: str) -> None:
    """Forget who claimed ``prefix``, keeping its sites: called when a model creates its sites
    from the data (``init=None``), so that a later ``init=`` replaces them."""
    _CLAIMS.pop(prefix, None)


def free_name(base: str) -> str:
    """``f"{base}.{i}"`` for the smallest i with no site in the param store: the default name of
    a guide, given on its first use. Unique among the guides whose sites coexist, and the same
    in every process that clears the store before building its guide (so checkpoints, stored by
    site name, load again)."""
    keys = list(pyro.get_param_store().keys())
    index = 0
    while any(_under(key, f"{base}.{index}") for key in keys):
        index += 1
    return f"{base}.{index}"
