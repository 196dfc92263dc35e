"""Small fits for :mod:`tests.test_sessions`, each seeding itself and never clearing the param
store, so that the test can run them one after another in one session and compare each with the
same fit in a fresh process.

``python -m tests.session_fits OUT NAME...`` imports everything once, then forks a child per
fit: each child is a copy of this just-imported process (an empty param store, no claims, no
guides made yet), runs one fit and writes its tensors to ``OUT/NAME.pt``."""

from __future__ import annotations

import os
import sys
import traceback

import pyro
import torch

import guides
from gallery import load
from gallery.models import factor_analysis, gmm, ppca, vae
from inference.svi import fit_svi
from tests.conftest import known_linear_gaussian, sample_linear_gaussian

NUM_STEPS = 200  # enough to move every parameter far from its start; the test compares, not converges


def _iris() -> torch.Tensor:
    return load("iris").data.double()


def _exact(module, data, size_name: str, size: int, **kwargs) -> dict[str, torch.Tensor]:
    pyro.set_rng_seed(0)
    init = module.init_params(data, size, generator=torch.Generator().manual_seed(0))
    result = fit_svi(
        module.model, module.posterior_guide, data, num_steps=NUM_STEPS, lr=0.05, progress=False, init=init,
        **{size_name: size}, **kwargs,
    )  # fmt: skip
    params = module.current_params()
    fields = ("weights", "loc", "scale_tril") if module is gmm else ("loc", "loading", "noise_variance")
    return {"losses": result.losses, **{field: getattr(params, field) for field in fields}}


def factor_analysis_iris() -> dict[str, torch.Tensor]:
    return _exact(factor_analysis, _iris(), "latent_dim", 2)


def ppca_iris() -> dict[str, torch.Tensor]:
    return _exact(ppca, _iris(), "latent_dim", 2)


def gmm_iris() -> dict[str, torch.Tensor]:
    return _exact(gmm, _iris(), "num_components", 3)


def factor_analysis_other() -> dict[str, torch.Tensor]:
    return _exact(factor_analysis, sample_linear_gaussian(known_linear_gaussian(False), 200), "latent_dim", 2)


def _vae(hidden: tuple[int, ...]) -> dict[str, torch.Tensor]:
    pyro.set_rng_seed(0)
    data = load("digits").data.float()[:100] / 16
    decoder = vae.Decoder(64, 2, hidden=hidden)
    encoder = guides.AmortisedNormal(64, 2, hidden=hidden, **guides.input_scaling(data))
    result = fit_svi(vae.model, encoder, data, num_steps=50, lr=0.01, progress=False, decoder=decoder)
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    return {"losses": result.losses, **state, **{f"encoder.{k}": v for k, v in encoder.state_dict().items()}}


def vae_first() -> dict[str, torch.Tensor]:
    return _vae((8,))


def vae_second() -> dict[str, torch.Tensor]:
    return _vae((8,))


def _amortised_ppca() -> dict[str, torch.Tensor]:
    pyro.set_rng_seed(0)
    data = _iris()
    init = ppca.init_params(data, 2, generator=torch.Generator().manual_seed(0))
    encoder = guides.AmortisedNormal(4, 2, **guides.input_scaling(data)).double()
    result = fit_svi(
        ppca.model, encoder, data, num_steps=NUM_STEPS, lr=0.05, progress=False, init=init, latent_dim=2
    )
    params = ppca.current_params()
    weights = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    return {"losses": result.losses, "loc": params.loc, "loading": params.loading, **weights}


def amortised_first() -> dict[str, torch.Tensor]:
    return _amortised_ppca()


def amortised_second() -> dict[str, torch.Tensor]:
    return _amortised_ppca()


FITS = {
    fit.__name__: fit
    for fit in (
        factor_analysis_iris,
        ppca_iris,
        gmm_iris,
        factor_analysis_other,
        vae_first,
        vae_second,
        amortised_first,
        amortised_second,
    )
}


def main(out: str, names: list[str]) -> int:
    torch.set_num_threads(1)
    for name in names:
        pid = os.fork()
        if pid == 0:  # the child: a fresh copy of this process
            try:
                torch.save(
                    {k: v.detach().cpu() for k, v in FITS[name]().items()}, os.path.join(out, f"{name}.pt")
                )
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
