"""Checkpoints: a run interrupted and resumed ends bit for bit where an uninterrupted run ends
(CPU), nothing non-finite is saved, and a file that is not our checkpoint is refused clearly."""

from __future__ import annotations

import pickle
import re

import pyro
import pytest
import torch

import guides
from gallery import load
from gallery.models import vae
from inference.checkpoint import Checkpointing, load_checkpoint
from inference.svi import fit_svi

NUM_STEPS, EVERY, BATCH = 40, 10, 32


class Interrupt(Exception):
    pass


def small_vae(device="cpu"):
    """Digits rows 0-199 in [0, 1], a 64-8-2 VAE with a 64-8-2 encoder, built from seed 0."""
    data = (load("digits").data[:200].float() / 16).to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    decoder = vae.Decoder(64, 2, hidden=(8,)).to(device)
    encoder = guides.AmortisedNormal(64, 2, hidden=(8,), **guides.input_scaling(data)).to(device)
    return data, decoder, encoder


def train(
    path,
    *,
    resume=False,
    stop_at=None,
    num_steps=NUM_STEPS,
    meta=None,
    hook=None,
    device="cpu",
    compile="off",
):
    data, decoder, encoder = small_vae(device)
    calls = {"n": 0}

    def grad_hook(params):
        calls["n"] += 1
        if hook is not None:
            hook(calls["n"], params)
        if stop_at is not None and calls["n"] == stop_at:
            raise Interrupt  # as if the process were killed in step `stop_at`

    checkpoint = Checkpointing(path, EVERY, resume, meta or {"model": "vae", "latent_dim": 2})
    result = fit_svi(
        vae.model,
        encoder,
        data,
        num_steps=num_steps,
        batch_size=BATCH,
        lr=0.01,
        num_particles=2,
        progress=False,
        grad_hook=grad_hook,
        checkpoint=checkpoint,
        compile=compile,
        decoder=decoder,
    )
    store = pyro.get_param_store()
    return result, {name: store[name].detach().clone() for name in store.keys()}


def test_interrupted_and_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path, device):
    """Bit for bit on CPU; on CUDA, whose kernels may reduce in a different order, to 1e-5."""
    expected_result, expected = train(tmp_path / "a.pt", device=device)
    with pytest.raises(Interrupt):
        train(tmp_path / "b.pt", stop_at=25, device=device)  # checkpoints at steps 10 and 20 were written
    assert load_checkpoint(tmp_path / "b.pt", meta={"model": "vae", "latent_dim": 2})["step"] == 20
    result, resumed = train(tmp_path / "b.pt", resume=True, device=device)
    assert resumed.keys() == expected.keys()
    same = torch.equal if device.type == "cpu" else lambda a, b: torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    for name, tensor in expected.items():
        assert same(resumed[name], tensor), name
    assert same(result.losses, expected_result.losses)


def test_a_non_finite_parameter_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(step, params):
        if step == 13:
            params[0].grad.fill_(float("nan"))

    path = tmp_path / "c.pt"
    with pytest.raises(ValueError, match=r"SVI diverged.*last good checkpoint \(step 10\)"):
        train(path, hook=poison)
    state = load_checkpoint(path, meta={"model": "vae", "latent_dim": 2})
    assert state["step"] == 10
    assert all(bool(torch.isfinite(t).all()) for t in state["params"].values())
    assert bool(torch.isfinite(state["losses"]).all()) and len(state["losses"]) == 10


def test_resume_refuses_other_settings_and_other_models(tmp_path):
    path = tmp_path / "d.pt"
    train(path, num_steps=10)
    with pytest.raises(ValueError, match="latent_dim=2, this run has latent_dim=3"):
        train(path, resume=True, meta={"model": "vae", "latent_dim": 3})
    state = torch.load(path, weights_only=True)
    name = next(iter(state["params"]))
    state["params"][name] = torch.zeros(7, 7)
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(f"parameter {name!r} has shape (7, 7)")):
        train(path, resume=True)
    state["params"]["other$$$weight"] = state["params"].pop(name)
    torch.save(state, path)
    with pytest.raises(ValueError, match="different model or guide"):
        train(path, resume=True)
    state["version"] = 99
    torch.save(state, path)
    with pytest.raises(ValueError, match="format version 99"):
        train(path, resume=True)


def test_missing_corrupt_and_truncated_files_are_clear_errors(tmp_path):
    meta = {"model": "vae"}
    with pytest.raises(ValueError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt", meta=meta)
    good = tmp_path / "good.pt"
    train(good, num_steps=10, meta=meta)
    payload = good.read_bytes()
    for name, data in (("garbage", b"not a checkpoint at all"), ("truncated", payload[: len(payload) // 2])):
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match="not a readable checkpoint"):
            load_checkpoint(bad, meta=meta)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a checkpoint written by this gallery"):
        load_checkpoint(other, meta=meta)


class _RunsCode:
    """Unpickling this would create a file: the kind of payload weights-only loading stops."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_checkpoint_whose_unpickling_would_run_code_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "pyro-model-gallery/svi-checkpoint", "payload": _RunsCode(target)}, crafted)
    assert not target.exists()
    with pytest.raises(ValueError, match="refusing to load .* objects other than tensors"):
        load_checkpoint(crafted, meta={})
    assert not target.exists()
    raw = tmp_path / "raw.pt"  # a bare pickle, not torch's zip format
    raw.write_bytes(pickle.dumps(_RunsCode(target)))
    with pytest.raises(ValueError, match="refusing to load|not a readable checkpoint"):
        load_checkpoint(raw, meta={})
    assert not target.exists()
