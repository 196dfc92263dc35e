"""Every test starts from an empty param store, a fixed seed and Pyro's validation on."""

from __future__ import annotations

import pyro
import pytest
import torch

from gallery.models.gmm import GMMParams
from gallery.models.linear_gaussian import LinearGaussianParams

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]


@pytest.fixture(autouse=True)
def fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: a thread pool only adds overhead, and on a busy 2-core machine torch's
    spinning threads make each small op ~40x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def exit_status(main, argv: list[str]) -> int:
    """Exit status of a command's ``main(argv)``, whether returned or raised by argparse."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


def known_gmm(device="cpu", dtype=torch.float64) -> GMMParams:
    """Three well-separated 2-D components with distinct shapes."""
    weights = torch.tensor([0.5, 0.3, 0.2])
    loc = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 4.0]])
    scale_tril = torch.tensor([[[1.0, 0.0], [0.5, 0.8]], [[0.7, 0.0], [-0.3, 1.2]], [[1.5, 0.0], [0.0, 0.4]]])
    return GMMParams(weights, loc, scale_tril=scale_tril).to(device=device, dtype=dtype)


def known_linear_gaussian(isotropic: bool, device="cpu", dtype=torch.float64) -> LinearGaussianParams:
    """d = 5, p = 2, loadings with well separated singular values."""
    loading = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.5], [-1.0, 0.5], [0.5, -0.5]])
    noise = torch.tensor(0.3) if isotropic else torch.tensor([0.2, 0.4, 0.3, 0.5, 0.25])
    loc = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    return LinearGaussianParams(loc, loading, noise).to(device=device, dtype=dtype)


def sample_gmm(params: GMMParams, num_data: int, seed: int = 0) -> torch.Tensor:
    """(N, D) draws from the mixture, exact (no Pyro), for synthetic-data tests."""
    gen = torch.Generator(device=params.loc.device).manual_seed(seed)
    c = torch.multinomial(params.weights, num_data, replacement=True, generator=gen)
    eps = torch.randn(
        num_data, params.loc.shape[1], generator=gen, device=params.loc.device, dtype=params.loc.dtype
    )
    return params.loc[c] + (params.scale_tril[c] @ eps[:, :, None]).squeeze(-1)


def sample_linear_gaussian(params: LinearGaussianParams, num_data: int, seed: int = 0) -> torch.Tensor:
    """(N, d) draws from N(loc, W W^T + diag(psi))."""
    gen = torch.Generator(device=params.loc.device).manual_seed(seed)
    kw = dict(generator=gen, device=params.loc.device, dtype=params.loc.dtype)
    z = torch.randn(num_data, params.latent_dim, **kw)
    noise = torch.randn(num_data, params.loc.shape[0], **kw) * params.psi.sqrt()
    return params.loc + z @ params.loading.T + noise
