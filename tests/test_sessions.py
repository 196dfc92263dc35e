"""Two models, or two fits of one, in one Python session without ``pyro.clear_param_store()``:
every fit equals the same fit in a fresh process (forked from a just-imported one,
:mod:`tests.session_fits`). Before parameter names were scoped to the model and claimed, factor
analysis then PPCA silently gave factor analysis, a second fit ignored its ``init=``, a mixture
then factor analysis crashed, and a second encoder named like the first never trained."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from gallery.models import MODELS, factor_analysis, gmm, ppca, protocol, vae
from tests import session_fits

ROOT = Path(__file__).resolve().parents[1]
# The order of the session: FA then PPCA; the mixture then FA again; FA on other data with an
# explicit init; two VAEs with two encoders; two amortised guides with default names.
SESSION = [
    "factor_analysis_iris",
    "ppca_iris",
    "gmm_iris",
    "factor_analysis_iris",
    "factor_analysis_other",
    "vae_first",
    "vae_second",
    "amortised_first",
    "amortised_second",
]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("fresh")
    names = sorted(set(SESSION))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.session_fits", str(out), *names], cwd=ROOT, env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return {name: torch.load(out / f"{name}.pt", weights_only=True) for name in names}


def test_fits_in_one_session_equal_fresh_process_fits(fresh):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fresh processes
    try:
        in_session = [(name, session_fits.FITS[name]()) for name in SESSION]  # the store is never cleared
    finally:
        torch.set_num_threads(before)
    for name, result in in_session:
        expected = fresh[name]
        assert result.keys() == expected.keys(), name
        for key, value in result.items():
            torch.testing.assert_close(
                value.detach(), expected[key], rtol=0, atol=1e-12, msg=f"{name}: {key}"
            )


@pytest.mark.parametrize("module", [gmm, factor_analysis, ppca])
def test_current_params_on_an_empty_store_says_to_fit(module):
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="fit") as raised:
        module.current_params()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_module_follows_the_protocol(name):
    module = MODELS[name]
    assert protocol.missing(module, exact=name != "vae") == []
    assert module.NAME == name and module.LATENT in ("c", "z")


def test_no_type_tests_on_a_models_params_outside_its_module():
    """The generic code asks gallery.models.owner, never isinstance(..., GMMParams)."""
    homes = {
        "GMMParams": ROOT / "gallery/models/gmm/model.py",
        "LinearGaussianParams": ROOT / "gallery/models/linear_gaussian.py",
    }
    found = []
    for folder in ("gallery", "guides", "inference", "bench"):  # the source tree (tests may check types)
        for path in (ROOT / folder).rglob("*.py"):
            for match in re.finditer(
                r"isinstance\([^)]*\b(GMMParams|LinearGaussianParams)\b", path.read_text()
            ):
                if path not in (homes[match.group(1)], Path(__file__).resolve()):
                    found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert found == []


def test_array_data_refused_in_one_line_by_every_model_and_guide():
    """A numpy array reaches a model or guide only by mistake: each says to convert it once."""
    import numpy as np

    import guides

    rows = np.zeros((10, 4))
    sizes = {"gmm": {"num_components": 3}, "factor-analysis": {"latent_dim": 2}, "ppca": {"latent_dim": 2}}
    sizes |= {"mfa": {"num_components": 3, "latent_dim": 2}, "mppca": {"num_components": 3, "latent_dim": 2}}
    assert set(sizes) | {"vae"} == set(MODELS)  # every model
    callables = [(MODELS[name].model, kwargs) for name, kwargs in sizes.items()]
    callables += [(guides.AmortisedNormal(4, 2), {}), (guides.MeanFieldNormal(10, 2), {})]
    callables += [(guides.MeanFieldCategorical(10, 3), {}), (vae.model, {"decoder": vae.Decoder(4, 2)})]
    for function, kwargs in callables:
        with pytest.raises(
            TypeError, match=r"^data is a numpy.ndarray, not a torch.Tensor; .*torch.as_tensor"
        ):
            function(rows, **kwargs)


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("gmm", {"num_components": 3}),
        ("factor-analysis", {"latent_dim": 2}),
        ("ppca", {"latent_dim": 2}),
        ("mfa", {"num_components": 3, "latent_dim": 2}),
        ("mppca", {"num_components": 3, "latent_dim": 2}),
    ],
)
def test_init_in_another_dtype_than_the_data_refused(name, sizes):
    """float32 data with a float64 init would train float64 parameters in silence."""
    from gallery import load

    data = load("iris").data
    module = MODELS[name]
    init = module.init_params(data, *sizes.values(), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^init is torch.float64 on cpu but the data is torch.float32"):
        module.model(data.float(), init=init, **sizes)
