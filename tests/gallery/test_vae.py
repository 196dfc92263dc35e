"""The VAE model: prior samples, shapes, the decoder's options, the loss falling, MNIST files."""

from __future__ import annotations

import gzip

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import guides
from gallery import load
from gallery.data import datasets
from gallery.models import vae
from inference.svi import fit_svi


@pytest.mark.parametrize("likelihood", vae.LIKELIHOODS)
def test_prior_samples_have_the_right_shapes(likelihood, device):
    decoder = vae.Decoder(10, 3, hidden=(16, 8), likelihood=likelihood).to(device)
    trace = poutine.trace(vae.model).get_trace(num_data=7, decoder=decoder, device=device)
    assert trace.nodes["z"]["value"].shape == (7, 3)
    x = trace.nodes["x"]["value"]
    assert x.shape == (7, 10) and x.device.type == torch.device(device).type
    if likelihood == "bernoulli":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    subsampled = poutine.trace(vae.model).get_trace(
        num_data=100, subsample_size=5, decoder=decoder, device=device
    )
    assert subsampled.nodes["x"]["value"].shape == (5, 10)
    assert vae.sample(decoder, 4).shape == (4, 10)


def test_decoder_options():
    linear = vae.Decoder(5, 2, hidden=())
    assert linear.linear and len(list(linear.parameters())) == 3  # A, b, log sigma^2
    params = vae.as_ppca(linear)
    assert params.loading.shape == (5, 2) and params.loc.shape == (5,) and params.noise_variance.shape == ()
    fixed = vae.Decoder(5, 2, hidden=(4,), noise_variance=0.5)
    assert fixed.noise_variance() == 0.5 and fixed.log_noise_variance is None
    with pytest.raises(ValueError, match="only an affine decoder"):
        vae.as_ppca(fixed)
    for kwargs, match in (
        ({"likelihood": "poisson"}, "likelihood"),
        ({"activation": "swish"}, "activation"),
        ({"noise_variance": -1.0}, "positive"),
        ({"likelihood": "bernoulli", "noise_variance": 0.1}, "Gaussian likelihood"),
    ):
        with pytest.raises(ValueError, match=match):
            vae.Decoder(5, 2, **kwargs)
    decoder = vae.Decoder(5, 2)  # float32 weights: they follow the data on the first call
    vae.model(torch.zeros(3, 5, dtype=torch.float64), decoder=decoder)
    assert decoder.net[-1].weight.dtype == torch.float64
    with pytest.raises(ValueError, match="one dtype and device"):
        vae.model(torch.zeros(3, 5, dtype=torch.float32), decoder=decoder)


@pytest.mark.parametrize("likelihood", vae.LIKELIHOODS)
def test_the_loss_falls(likelihood):
    """Digits (binarised for Bernoulli), 300 minibatch steps: the last 50 losses average well
    below the first 50 (by more than 10% of their size: the fall seen is over 40%)."""
    data = load("digits").data.float() / 16
    if likelihood == "bernoulli":
        data = (data > 0.5).float()
    decoder = vae.Decoder(64, 2, hidden=(32,), likelihood=likelihood)
    encoder = guides.AmortisedNormal(64, 2, hidden=(32,), **guides.input_scaling(data))
    losses = fit_svi(
        vae.model, encoder, data, num_steps=300, batch_size=64, lr=0.01, progress=False, decoder=decoder
    ).losses
    first, last = float(losses[:50].mean()), float(losses[-50:].mean())
    assert last < first - 0.1 * abs(first)


def test_mean_field_guide_trains_the_vae():
    data = load("digits").data.float()[:100] / 16
    decoder = vae.Decoder(64, 2, hidden=(16,))
    guide = guides.MeanFieldNormal(100, 2)
    losses = fit_svi(
        vae.model, guide, data, num_steps=200, batch_size=20, lr=0.05, progress=False, decoder=decoder
    )
    assert float(losses.losses[-20:].mean()) < float(losses.losses[:20].mean())
    assert pyro.param(f"{guide.name}_loc").shape == (100, 2)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.mark.parametrize("layout, compress", [("MNIST/raw", True), ("raw", False), ("", False)])
def test_mnist_is_read_from_torchvision_layout(tmp_path, layout, compress):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    _write_idx(folder / f"train-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(folder / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    dataset = datasets.load_mnist(tmp_path)
    assert dataset.data.shape == (5, 784) and dataset.image_shape == (28, 28)
    assert torch.equal(dataset.data, torch.from_numpy(images.reshape(5, -1).astype(np.float64)))
    assert torch.equal(dataset.labels, torch.from_numpy(labels))


def test_missing_or_broken_mnist_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no MNIST files .* nothing is downloaded"):
        datasets.load_mnist(tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28)), False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5), False)
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        datasets.load_mnist(tmp_path)
