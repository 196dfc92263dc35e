"""The library's entry points refuse what the command line refuses, with one-line ValueErrors:
half-precision, sparse and meta tensors, data of another width than the parameters, ``init``,
the decoder or the encoder were built for, a NaN row at a model's own ``log_likelihood``, and
particle counts below 1."""

from __future__ import annotations

import pyro
import pytest
import torch

import guides
from gallery import load
from gallery.data import check_data
from gallery.models import gmm, ppca, vae
from guides.registry import make_guide
from inference import elbo, fit_em, fit_svi, importance_estimate, log_likelihood

IRIS = load("iris").data


def one_line(raised: pytest.ExceptionInfo) -> str:
    text = str(raised.value)
    assert len(text.splitlines()) == 1, text
    return text


@pytest.mark.parametrize(
    "data, phrase",
    [
        (IRIS.half(), "convert to float32 or float64"),
        (IRIS.bfloat16(), "convert to float32 or float64"),
        (IRIS.to_sparse(), "pass a dense one"),
        (torch.empty(150, 4, dtype=torch.float64, device="meta"), "meta device"),
    ],
    ids=["float16", "bfloat16", "sparse", "meta"],
)
def test_tensors_without_usable_values_are_refused(data, phrase):
    init = gmm.init_params(IRIS, 3)
    for call in (lambda: check_data(data), lambda: log_likelihood(data, init), lambda: fit_em(data, init)):
        with pytest.raises(ValueError) as raised:
            call()
        assert phrase in one_line(raised)


def test_data_of_another_width_than_the_parameters_is_refused():
    init = gmm.init_params(IRIS, 3)
    narrow = IRIS[:, :3].contiguous()
    for call in (
        lambda: log_likelihood(narrow, init),
        lambda: fit_em(narrow, init),
        lambda: gmm.log_likelihood(narrow, init),
    ):
        with pytest.raises(ValueError, match="has 3 columns but .* are for 4") as raised:
            call()
        one_line(raised)
    linear = ppca.init_params(IRIS, 2)
    with pytest.raises(ValueError, match="has 3 columns but the parameters are for 4"):
        log_likelihood(narrow, linear)


def test_data_of_another_width_than_the_networks_is_refused():
    pyro.set_rng_seed(0)
    decoder, encoder = vae.Decoder(2, 64, hidden=(8,)), guides.AmortisedNormal(64, 2, hidden=(8,))
    narrow = torch.rand(50, 10)
    calls = {
        "fit_svi": lambda: fit_svi(
            vae.model, encoder, narrow, num_steps=2, batch_size=10, progress=False, decoder=decoder
        ),
        "importance_estimate": lambda: importance_estimate(
            vae.model, encoder, narrow, num_samples=3, decoder=decoder
        ),
        "elbo": lambda: elbo(vae.model, encoder, narrow, num_particles=2, decoder=decoder),
    }
    init = gmm.init_params(IRIS, 3)
    kwargs = {"num_components": 3, "covariance_type": "full"}
    for name in ("exact", "mean-field", "amortised"):
        guide = make_guide("gmm", name, data=IRIS, init=init, size=3, model_kwargs=kwargs)
        narrow_iris = IRIS[:, :3].contiguous()
        calls[f"fit_svi gmm {name}"] = lambda guide=guide, data=narrow_iris: fit_svi(
            gmm.model, guide, data, num_steps=2, progress=False, init=init, **kwargs
        )
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"do not fit data of shape \((50, 10|150, 3)\)") as raised:
            call()
        assert "build them" in one_line(raised), name


def test_a_models_own_log_likelihood_refuses_a_nan_row_as_inference_does():
    bad = IRIS.clone()
    bad[3, 1] = float("nan")
    init = gmm.init_params(IRIS, 3)
    for call in (lambda: gmm.log_likelihood(bad, init), lambda: log_likelihood(bad, init)):
        with pytest.raises(ValueError, match=r"NaN or inf in 1 row\(s\) \(rows 3\)"):
            call()


@pytest.mark.parametrize("num_particles", [0, -5])
def test_elbo_refuses_fewer_than_one_particle(num_particles):
    decoder, encoder = vae.Decoder(2, 64, hidden=(8,)), guides.AmortisedNormal(64, 2, hidden=(8,))
    with pytest.raises(ValueError, match=f"num_particles={num_particles} .* must be at least 1"):
        elbo(vae.model, encoder, torch.rand(20, 64), num_particles=num_particles, decoder=decoder)
