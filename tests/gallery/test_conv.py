"""``--architecture conv``: the convolutional decoder and encoder on square images, their shapes
with particle and data batch dimensions, training on the digits in float32 and float64, and the
refusal of rows that are not square images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import guides
from gallery.data import datasets
from gallery.models import vae
from gallery.models.conv import image_side
from inference.svi import fit_svi
from tests.test_cli import run_main
from tests.test_cli_vae import SMALL_NET, TINY, metrics


@pytest.mark.parametrize("side", [8, 28])
def test_shapes_with_particle_and_data_dimensions(side):
    decoder = vae.Decoder(side * side, 3, hidden=(16,), architecture="conv")
    z = torch.randn(5, 7, 3)  # (particles, rows, p)
    assert decoder(z).shape == (5, 7, side * side)
    assert decoder.likelihood_dist(z).batch_shape == (5, 7)
    encoder = guides.AmortisedNormal(side * side, 3, hidden=(16,), architecture="conv")
    assert encoder.encode(torch.rand(7, side * side)).batch_shape == (7,)
    flow = guides.AmortisedFlow(side * side, 3, hidden=(16,), architecture="conv")
    assert flow.encode(torch.rand(7, side * side)).event_shape == (3,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trains_on_the_digits(dtype, one_thread):
    """The ELBO rises: the mean loss of the last 20 of 150 steps is below that of the first 20
    by more than 5 nats per datum (measured on CPU: 60.4 to 52.7 in both dtypes). Built in float32, the
    networks follow float64 data with no ``.double()``."""
    data = (datasets.load("digits").data[:300] / 16.0).to(dtype)
    decoder = vae.Decoder(64, 2, hidden=(32,), architecture="conv")
    guide = guides.AmortisedNormal(64, 2, hidden=(32,), architecture="conv", name="conv.guide")
    result = fit_svi(
        vae.model, guide, data, num_steps=150, batch_size=64, lr=0.005, progress=False, decoder=decoder
    )
    losses = result.losses / len(data)  # per datum
    assert float(losses[:20].mean() - losses[-20:].mean()) > 5
    assert all(p.dtype == dtype for p in [*decoder.parameters(), *guide.parameters()])


@pytest.mark.parametrize(
    "width, message",
    [(61, "needs rows that are square images"), (36, "6x6 is not a multiple of 4")],
)
def test_rows_that_are_not_square_images_are_refused(width, message):
    with pytest.raises(ValueError, match=message):
        image_side(width)
    with pytest.raises(ValueError, match="needs square images"):
        image_side(64, (4, 16))


def test_command_line_run_with_the_flow_guide(tmp_path):
    out = tmp_path / "conv"
    argv = ["run", "vae", "--architecture", "conv", "--guide", "amortised-flow", *TINY, *SMALL_NET]
    assert run_main([*argv, "--out", str(out)]) == 0
    m = metrics(out)
    assert m["architecture"] == "conv" and m["approximation_gap_per_datum"] is not None


def test_command_line_refusal_is_one_line(tmp_path, capsys):
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(0).random((40, 61)))
    assert run_main(["run", "vae", "--architecture", "conv", "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "square images" in err[0] and "--architecture mlp" in err[0]


def test_conv_networks_default_to_a_smaller_learning_rate():
    """At the networks' 0.005 the conv VAE on the digits ignored z (BENCHMARKS.md): its default is
    below the MLP VAE's; an explicit --lr wins, and per-datapoint tables keep theirs."""
    from gallery.app.config import CONV_LR, VAE_LR, make_config

    assert make_config("vae", architecture="conv").train.lr == CONV_LR < VAE_LR
    assert make_config("vae").train.lr == VAE_LR  # the MLP VAE's (0.005 diverged on 784-400-z50)
    assert make_config("vae", architecture="conv", lr=0.01).train.lr == 0.01
    assert make_config("vae", architecture="conv", guide="mean-field").train.lr == 0.05


def test_conv_is_refused_with_the_linear_decoder(capsys):
    assert run_main(["run", "vae", "--architecture", "conv", "--decoder", "linear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop --decoder linear" in err[0]
