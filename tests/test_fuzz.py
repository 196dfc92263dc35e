"""Property-based fuzzing of the command line and the public API with hypothesis.

Every generated input ends either in a fit with finite numbers (exit 0) or in exit status 2
with one line that says what to change (a ValueError from the API); never exit status 1, never
a traceback, never a non-finite number in metrics.json. Shapes (empty, one row, one column,
1-D, 3-D), dtypes (int, bool, float16, object, strings in a CSV), values (NaN, inf, 1e300,
constant columns, duplicate rows only), sizes (components equal to rows, latent dimension at
the limit) and malformed files (header only, ragged CSV, truncated .npy, wrong .npz keys),
one command line in four with ``--stream`` (the file left on disk).
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings

import numpy as np
import pyro
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guides
from gallery.models import factor_analysis, gmm, ppca, vae
from inference.svi import fit_svi
from tests.test_cli import run_main

# CI runs a fixed, derandomised set of examples so that a landing never depends on luck;
# FUZZ_EXAMPLES=1000 FUZZ_RANDOM=1 explores fresh ones.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 60))
DERANDOMIZE = os.environ.get("FUZZ_RANDOM") != "1"
TINY = ["--num-steps", "5", "--em-iters", "3", "--eval-particles", "2", "--no-progress"]
VAE_TINY = ["--hidden", "4", "--gap-rows", "3", "--gap-steps", "2", "--batch-size", "4"]
CASES: list[str] = []  # what ran, reported at the end


@st.composite
def arrays(draw) -> np.ndarray:
    """Numbers of awkward shape, type and value."""
    ndim = draw(st.sampled_from([1, 2, 2, 2, 2, 2, 3]))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(["float64", "float64", "float32", "float16", "int64", "bool"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = rng.normal(size=shape) * draw(st.sampled_from([1.0, 1.0, 1.0, 1e-8, 1e150, 1e300]))
    special = draw(
        st.sampled_from(["none", "none", "none", "nan", "inf", "constant-column", "duplicate-rows"])
    )
    if array.size and special == "nan":
        array.flat[draw(st.integers(0, array.size - 1))] = math.nan
    elif array.size and special == "inf":
        array.flat[draw(st.integers(0, array.size - 1))] = -math.inf
    elif ndim == 2 and array.size and special == "constant-column":
        array[:, 0] = 3.0
    elif ndim == 2 and array.size and special == "duplicate-rows":
        array[:] = array[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overflow to inf in float16 is one of the cases
        return array.astype(dtype)


@st.composite
def files(draw, tmp_path_factory) -> str:
    """A data file: .npy, .npz or .csv, well formed or not."""
    folder = tmp_path_factory.mktemp("fuzz")
    kind = draw(st.sampled_from(["npy", "npy", "npy", "npz", "csv", "csv", "npy-truncated", "npz-keys",
                                 "csv-ragged", "csv-header-only", "csv-strings", "npy-object"]))  # fmt: skip
    array = draw(arrays())
    path = folder / f"data.{kind.split('-')[0]}"
    if kind == "npy":
        np.save(path, array)
    elif kind == "npy-truncated":
        buffer = io.BytesIO()
        np.save(buffer, array)
        path.write_bytes(buffer.getvalue()[: max(1, len(buffer.getvalue()) - 9)])
    elif kind == "npy-object":
        np.save(path, np.array([[1, "a"], [2, None]], dtype=object), allow_pickle=True)
    elif kind == "npz":
        np.savez(path, data=array)
    elif kind == "npz-keys":
        np.savez(path, a=array, b=array)
    else:
        rows = (
            np.atleast_2d(array) if array.ndim < 3 else array.reshape(array.shape[0], -1 if array.size else 0)
        )
        lines = [",".join(str(v) for v in row) for row in rows.tolist()]
        if kind == "csv-ragged" and lines:
            lines[0] += ",1.0"
        elif kind == "csv-header-only":
            lines = ["a,b,c"]
        elif kind == "csv-strings" and lines:
            lines[-1] = lines[-1] + ",oops" if lines[-1] else "oops"
        path.write_text("\n".join(["x0,x1,x2", *lines]) + "\n")
    return str(path)


@st.composite
def commands(draw, tmp_path_factory) -> list[str]:
    model = draw(st.sampled_from(["gmm", "factor-analysis", "ppca", "vae"]))
    argv = ["run", model, "--data", draw(files(tmp_path_factory)), *TINY]
    if model == "gmm":
        argv += ["--components", str(draw(st.integers(1, 8)))]
    else:
        argv += ["--latent-dim", str(draw(st.integers(1, 7)))]
    if model == "vae":
        argv += [*VAE_TINY, "--heldout-fraction", draw(st.sampled_from(["0", "0.2", "0.5"]))]
    if draw(st.booleans()):
        argv += ["--batch-size", str(draw(st.integers(1, 8)))]
    if draw(st.integers(0, 3)) == 0:  # the file left on disk, memory-mapped
        argv.append("--stream")
    return argv


@settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def test_every_command_line_input_fits_or_exits_2_with_one_line(tmp_path_factory, capsys, data):
    argv = data.draw(commands(tmp_path_factory))
    out = tmp_path_factory.mktemp("out")
    status = run_main([*argv, "--out", str(out)])
    captured = capsys.readouterr()
    CASES.append(f"{status} {' '.join(argv[:2])} {argv[3].rsplit('/', 1)[-1]} {captured.err.strip()[30:400]}")
    assert status in (0, 2), captured.err
    if status == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m gallery run: error: "), captured.err
        assert not (out / "metrics.json").exists()
    else:
        metrics = json.loads((out / "metrics.json").read_text())
        numbers = [v for v in metrics.values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers)


@settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck)
)
@given(
    array=arrays(), model=st.sampled_from(["gmm", "factor-analysis", "ppca", "vae"]), size=st.integers(1, 8)
)
def test_every_api_input_fits_or_raises_value_error(array, model, size):
    """The models with the SVI loop, called directly: a ValueError, or finite losses."""
    pyro.clear_param_store()  # hypothesis runs every example inside one test
    data = torch.from_numpy(np.asarray(array))
    if data.dtype.is_floating_point:
        data = data.double()
    try:
        if model == "gmm":
            init = gmm.init_params(data, size) if data.dim() == 2 else None
            kwargs = {"num_components": size, "init": init}
            fitted = fit_svi(gmm.model, guides.gmm_posterior, data, num_steps=3, progress=False, **kwargs)
        elif model == "vae":
            decoder = vae.Decoder(data.shape[-1] if data.dim() else 1, size, hidden=(4,)).double()
            guide = guides.MeanFieldNormal(len(data) if data.dim() else 1, size)
            fitted = fit_svi(vae.model, guide, data, num_steps=3, progress=False, decoder=decoder)
        else:
            module = ppca if model == "ppca" else factor_analysis
            init = module.init_params(data, size) if data.dim() == 2 else None
            fitted = fit_svi(module.model, guides.ppca_posterior if model == "ppca" else
                             guides.factor_analysis_posterior, data, num_steps=3, progress=False,
                             latent_dim=size, init=init)  # fmt: skip
    except ValueError as err:
        assert str(err) and "\n" not in str(err).strip()
        return
    assert bool(torch.isfinite(fitted.losses).all())


@settings(
    max_examples=MAX_EXAMPLES // 2,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)
@given(
    num_data=st.integers(2, 30),
    obs_dim=st.integers(2, 6),
    model=st.sampled_from(["gmm", "factor-analysis", "ppca", "vae"]),
    at_limit=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sizes_at_their_limits_fit_or_exit_2(
    tmp_path_factory, capsys, num_data, obs_dim, model, at_limit, seed
):
    """Well-formed data with components equal to rows, or the latent dimension one below the
    data's: a fit with finite numbers, or exit 2 with one line."""
    folder = tmp_path_factory.mktemp("limits")
    np.save(folder / "data.npy", np.random.default_rng(seed).normal(size=(num_data, obs_dim)))
    argv = ["run", model, "--data", str(folder / "data.npy"), *TINY]
    if model == "gmm":
        argv += ["--components", str(num_data if at_limit else 1)]
    else:
        argv += ["--latent-dim", str(obs_dim - 1 if at_limit else 1)]
    if model == "vae":
        argv += [*VAE_TINY, "--heldout-fraction", "0"]
    status = run_main([*argv, "--out", str(folder / "out")])
    captured = capsys.readouterr()
    CASES.append(f"{status} {model} N={num_data} D={obs_dim} {captured.err.strip()[30:400]}")
    assert status in (0, 2), captured.err
    if status == 2:
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    else:
        metrics = json.loads((folder / "out" / "metrics.json").read_text())
        assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))


def test_report_how_many_cases_ran(capsys):
    """Prints the fuzzing tally into the captured output: shown with -s, or when a test fails."""
    print(f"\nfuzzed command lines: {len(CASES)}; exit 0: {sum(c.startswith('0') for c in CASES)}")
    if os.environ.get("FUZZ_VERBOSE"):
        print("\n".join(sorted(CASES)))
    assert len(CASES) in (0, MAX_EXAMPLES + MAX_EXAMPLES // 2)  # none when run alone


pytestmark = pytest.mark.filterwarnings("ignore")
