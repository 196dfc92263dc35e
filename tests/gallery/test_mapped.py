"""Data left on disk (gallery.data.mapped) and the inference that walks it.

Each streamed computation is compared with the same computation on the array in memory. Blocks
of a few rows force many blocks and merges. The only differences allowed are from the order of
summation. That is rounding: 1e-12 relative is a thousand times float64's epsilon, with room for
a few hundred EM iterations.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyro
import pytest
import torch

import guides
from gallery.data import datasets, mapped
from gallery.data.mapped import MappedRows, init_sample, moments, open_npy
from gallery.models import factor_analysis, gmm, ppca
from guides.mean_field import MeanFieldNormal
from inference import evaluate
from inference.em import em_gmm, em_linear_gaussian, linear_gaussian_e_step, ppca_closed_form
from inference.svi import fit_svi
from tests.conftest import CUDA, known_gmm, known_linear_gaussian, sample_gmm, sample_linear_gaussian

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:EM did not converge:UserWarning"),
]
CPU = torch.device("cpu")


def _mapped(tmp_path, data: torch.Tensor, block_rows: int = 7, name: str = "x.npy") -> MappedRows:
    """``data`` written to a .npy and mapped back, read onto ``data``'s device."""
    path = tmp_path / name
    np.save(path, data.cpu().numpy())
    return replace(open_npy(path, data.device, torch.float64), block_rows=block_rows)


def test_rows_and_blocks_are_the_file_rows_transformed(tmp_path):
    data = torch.randn(50, 4, dtype=torch.float64)
    rows = _mapped(tmp_path, data)
    index = torch.tensor([31, 2, 17, 2, 49])
    assert torch.equal(rows.rows(index), data[index.sort().values])
    assert torch.equal(torch.cat(list(mapped.blocks(rows))), data)
    assert [len(b) for b in mapped.blocks(rows)] == [7] * 7 + [1]
    shard = rows[10:30]
    assert len(shard) == 20 and torch.equal(torch.cat(list(mapped.blocks(shard))), data[10:30])
    shift, divisor = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64)
    view = replace(rows, columns=(0, 2, 3), shift=shift.double(), divisor=divisor)
    assert view.shape == (50, 3)
    expected = (data[:, [0, 2, 3]] - shift) / divisor
    assert torch.equal(view.rows(torch.arange(50)), expected)
    assert torch.equal(torch.cat(list(mapped.blocks(view))), expected)
    assert view.to(torch.float32).rows(index).dtype == torch.float32
    with pytest.raises(TypeError, match="contiguous slice"):
        rows[::2]


def test_a_read_is_a_copy_not_the_map(tmp_path):
    rows = _mapped(tmp_path, torch.zeros(20, 2, dtype=torch.float64))
    block = next(iter(mapped.blocks(rows)))
    block += 1  # would raise or write through if the tensor aliased the read-only map
    assert float(next(iter(mapped.blocks(rows))).sum()) == 0


def test_moments_match_a_two_pass_reference_far_from_the_origin(tmp_path):
    """Chan's merge of 8 blocks against numpy's centred two-pass sums, on data at 1e4 from the
    origin with unit spread. Rounding the mean costs both ~1e4 * 2.2e-16 = 2e-12 per centred
    value, so entries may differ by ~1e-11; the naive sum of squares, sum x^2 - N mean^2, would
    be off by ~1e8 * 2.2e-16 * N ~ 1e-6. The bound, 1e-10, is 10x the first and far below the
    second."""
    mixing = torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 2]], dtype=torch.float64)
    data = 1e4 + torch.randn(53, 3, dtype=torch.float64) @ mixing
    stats = moments(_mapped(tmp_path, data))
    reference = np.cov(data.numpy(), rowvar=False, bias=True)
    assert stats.num_data == 53
    assert torch.allclose(stats.mean, data.mean(0), rtol=1e-15, atol=0)
    assert np.abs(stats.covariance.numpy() - reference).max() < 1e-10
    assert torch.equal(stats.minimum, data.amin(0)) and torch.equal(stats.maximum, data.amax(0))
    in_memory = moments(data)
    assert (in_memory.covariance - stats.covariance).abs().max() < 1e-10


def test_standardized_and_selected_moments(tmp_path):
    data = torch.randn(40, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + 3
    data[:, 1] = 2.0
    stats = moments(_mapped(tmp_path, data))
    assert stats.constant.tolist() == [False, True, False]
    kept = stats.select(~stats.constant)
    assert kept.covariance.shape == (2, 2) and torch.equal(kept.mean, stats.mean[[0, 2]])
    standard, std = stats.standardized()
    assert std[1] == 1  # a constant column is left at scale 1
    direct = moments((data - stats.mean) / std)
    assert torch.allclose(standard.covariance, direct.covariance, rtol=1e-12, atol=1e-15)
    assert torch.allclose(standard.mean, torch.zeros(3, dtype=torch.float64), atol=1e-14)


def test_a_bad_value_is_named_by_its_row_in_the_whole_file(tmp_path):
    data = torch.randn(40, 2, dtype=torch.float64)
    data[23, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in 1 row\(s\) \(rows 23\)"):
        moments(_mapped(tmp_path, data))
    data[23, 1], data[5, 0] = 0.0, 1e300
    with pytest.raises(ValueError, match="squares overflow"):
        moments(_mapped(tmp_path, data))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.arange(6.0), "must be 2-D"),
        (np.zeros((0, 3)), "must be 2-D"),
        (np.array([["a", "b"]]), "holds <U1 values"),
    ],
)
def test_open_npy_refuses_what_it_cannot_map(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=message):
        open_npy(tmp_path / "bad.npy", CPU, torch.float64)


@pytest.mark.parametrize("dtype", [">f8", "<i2", "bool", "<f2", "<f4"])
def test_any_numeric_file_reads_as_the_in_memory_loader_reads_it(tmp_path, dtype):
    """Big-endian, integer, boolean and half-precision files give the rows that
    ``gallery.data.datasets.load`` gives (float64, native order), in blocks and by index."""
    array = (np.random.default_rng(0).normal(size=(30, 3)) * 4).astype(dtype)
    np.save(tmp_path / "x.npy", array)
    rows = replace(open_npy(tmp_path / "x.npy", CPU, torch.float64), block_rows=7)
    expected = datasets.load(str(tmp_path / "x.npy")).data
    assert torch.equal(torch.cat(list(mapped.blocks(rows))), expected)
    assert torch.equal(rows.rows(torch.tensor([4, 29, 0])), expected[[0, 4, 29]])


def test_open_npy_refuses_a_file_stored_column_by_column(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((20, 3))))
    with pytest.raises(ValueError, match=r"Fortran order.*numpy.ascontiguousarray"):
        open_npy(tmp_path / "f.npy", CPU, torch.float64)


def test_open_npy_refuses_other_files(tmp_path):
    (tmp_path / "x.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="--stream reads a .npy file"):
        open_npy(tmp_path / "x.csv", CPU, torch.float64)
    with pytest.raises(ValueError, match="does not exist"):
        open_npy(tmp_path / "missing.npy", CPU, torch.float64)
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="cannot map"):
        open_npy(tmp_path / "broken.npy", CPU, torch.float64)


def test_init_sample_is_the_same_rows_in_memory_and_on_disk(tmp_path, monkeypatch):
    data = torch.randn(30, 2, dtype=torch.float64)
    rows = _mapped(tmp_path, data)
    assert init_sample(data, None) is data
    assert torch.equal(init_sample(rows, None), data)
    monkeypatch.setattr(mapped, "INIT_ROWS", 10)
    first = init_sample(data, torch.Generator().manual_seed(1))
    second = init_sample(rows, torch.Generator().manual_seed(1))
    assert first.shape == (10, 2) and torch.equal(first, second)


def test_em_gmm_on_disk_is_em_in_memory(tmp_path, device):
    data = sample_gmm(known_gmm(device), 300)
    init = gmm.init_params(data, 3, generator=torch.Generator().manual_seed(0))
    in_memory = em_gmm(data, init, max_iters=40, tol=0.0)
    on_disk = em_gmm(_mapped(tmp_path, data, block_rows=64), init, max_iters=40, tol=0.0)
    assert on_disk.num_iters == in_memory.num_iters == 40
    assert torch.allclose(on_disk.log_likelihoods, in_memory.log_likelihoods, rtol=1e-12, atol=0)
    assert torch.allclose(on_disk.params.scale_tril, in_memory.params.scale_tril, rtol=1e-10, atol=1e-12)
    assert torch.allclose(on_disk.params.loc, in_memory.params.loc, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("isotropic", [False, True])
def test_linear_gaussian_em_on_disk_is_em_in_memory(tmp_path, isotropic):
    data = sample_linear_gaussian(known_linear_gaussian(isotropic), 200)
    module = ppca if isotropic else factor_analysis
    init = module.init_params(data, 2, generator=torch.Generator().manual_seed(0))
    in_memory = em_linear_gaussian(data, init, max_iters=50, tol=0.0)
    on_disk = em_linear_gaussian(_mapped(tmp_path, data, block_rows=9), init, max_iters=50, tol=0.0)
    assert torch.allclose(on_disk.log_likelihoods, in_memory.log_likelihoods, rtol=1e-12, atol=0)
    assert torch.allclose(on_disk.params.loading, in_memory.params.loading, rtol=1e-9, atol=1e-11)
    closed = ppca_closed_form(_mapped(tmp_path, data, block_rows=9), 2)
    assert torch.allclose(closed.loc, ppca_closed_form(data, 2).loc, rtol=1e-12, atol=1e-14)


def test_moment_e_step_log_likelihood_is_the_exact_mean(tmp_path):
    """The E-step's Woodbury trace formula against the row-by-row exact log p(x)."""
    params = known_linear_gaussian(False)
    data = sample_linear_gaussian(params, 100)
    _, mean_log_lik = linear_gaussian_e_step(moments(data), params)
    exact = evaluate.log_likelihood(data, params).mean()
    assert torch.allclose(mean_log_lik, exact, rtol=1e-13, atol=0)
    assert torch.allclose(evaluate.mean_log_likelihood(_mapped(tmp_path, data), params), exact, rtol=1e-13)


def test_elbo_on_disk_and_in_row_chunks_is_the_whole_data_elbo(tmp_path, monkeypatch):
    """The exact mixture guide sums c out: its ELBO has no Monte Carlo error, so block sums and
    rescaled row chunks must give the whole data's value to rounding."""
    data = sample_gmm(known_gmm(), 120)
    kwargs = dict(num_components=3, covariance_type="full", init=known_gmm())
    whole = evaluate.elbo(gmm.model, guides.gmm_posterior, data, **kwargs)
    on_disk = evaluate.elbo(gmm.model, guides.gmm_posterior, _mapped(tmp_path, data, 25), **kwargs)
    monkeypatch.setattr(evaluate, "ROW_PARTICLES", 32)
    chunked = evaluate.elbo(gmm.model, guides.gmm_posterior, data, num_particles=3, chunk_size=2, **kwargs)
    assert on_disk == pytest.approx(whole, rel=1e-12)
    assert chunked == pytest.approx(whole, rel=1e-12)
    exact = gmm.log_likelihood(data, gmm.current_params()).sum()  # as the param store holds them
    assert whole == pytest.approx(float(exact), rel=1e-12)


def test_fit_svi_reading_minibatches_from_disk_takes_the_in_memory_steps(tmp_path):
    """Same seed, same batches: the file run scales B rows by N / B as the subsampled plate
    does, and the minibatch's order does not change the ELBO beyond rounding. (On CUDA the
    in-memory run draws its batches on the GPU and the file run on the host, so the batches
    differ; there the test below checks the streamed run on its own.)"""
    data = sample_gmm(known_gmm(), 200)
    init = gmm.init_params(data, 3, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_steps=30, batch_size=20, lr=0.05, progress=False, num_components=3, init=init)
    losses = fit_svi(gmm.model, guides.gmm_posterior, data, **kwargs).losses
    in_memory = gmm.current_params()
    pyro.clear_param_store()
    streamed = fit_svi(gmm.model, guides.gmm_posterior, _mapped(tmp_path, data), **kwargs).losses
    on_disk = gmm.current_params()
    assert torch.allclose(streamed, losses, rtol=1e-12, atol=0)
    for name in ("weights", "loc", "scale_tril"):
        assert torch.allclose(getattr(on_disk, name), getattr(in_memory, name), rtol=1e-10, atol=1e-12)


def test_fit_svi_on_disk_refuses_what_it_cannot_do(tmp_path):
    data = sample_linear_gaussian(known_linear_gaussian(True), 60)
    rows = _mapped(tmp_path, data)
    kwargs = dict(num_steps=2, lr=0.01, progress=False, latent_dim=2)
    with pytest.raises(ValueError, match="pass a batch_size"):
        fit_svi(ppca.model, guides.ppca_posterior, rows, **kwargs)
    with pytest.raises(ValueError, match="keeps a q for every data point"):
        fit_svi(ppca.model, MeanFieldNormal(60, 2), rows, batch_size=10, **kwargs)
    with pytest.raises(ValueError, match="keeps a q for every data point"):
        fit_svi(ppca.model, guides.auto_normal(ppca.model), rows, batch_size=10, **kwargs)


@pytest.mark.cuda
@CUDA
def test_fit_svi_streams_a_file_to_the_gpu(tmp_path):
    """The rows read from the map land on the GPU, the parameters stay there, and the fit
    reaches EM's log-likelihood (1e-3 relative: 400 steps of B = 50 on 300 rows)."""
    device = torch.device("cuda")
    data = sample_gmm(known_gmm(device), 300)
    init = gmm.init_params(data, 3, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_steps=400, batch_size=50, lr=0.05, progress=False, num_components=3, init=init)
    fit_svi(gmm.model, guides.gmm_posterior, _mapped(tmp_path, data), **kwargs)
    fitted = gmm.current_params()
    assert fitted.loc.device.type == "cuda"
    em = em_gmm(data, init, max_iters=200).log_likelihoods[-1]
    assert float(gmm.log_likelihood(data, fitted).mean()) == pytest.approx(float(em), rel=1e-3)
