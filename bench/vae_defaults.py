"""Benchmark: ``run vae`` at its defaults on MNIST-sized data against a plain PyTorch loop.

Pyro's VAE example architecture [1] (784-400-z50, ReLU, Bernoulli pixels, batch 128) on the
bundled ``digits28`` set (10,000 binarised 28x28 digits upsampled from the 8x8 ones; not MNIST),
20% held out. "Ours" is the gallery's whole run (``gallery.app.pipeline``: prepare, SVI, the
bounded evaluation) at the default learning rate and schedule; the baseline is a plain PyTorch
loop with the same architecture, initial weights and minibatches, Adam at a constant 1e-3 as
Pyro's example, no input standardisation, trained for the same steps. Both are scored by the same
importance-weighted estimate (Burda et al. 2016) on every held-out row, with the run's K.
Prints one JSON object: held-out log p(x) and ELBO of each, the run's SVI and evaluation
seconds and the evaluation's share of the run.

References:
    1. Pyro's VAE tutorial, https://pyro.ai/examples/vae.html (``examples/vae/vae.py``).
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch
from pyro import poutine
from torch.nn.functional import binary_cross_entropy_with_logits, softplus

from gallery.app import pipeline, vae_job
from gallery.app.config import make_config
from gallery.models import vae
from inference.importance import importance_estimate
from inference.svi import minibatches

HALF_LOG_2PI = 0.9189385332046727


def plain_loop(args, decoder: vae.Decoder, encoder, train: torch.Tensor) -> float:
    """Train copies of ``decoder`` and ``encoder`` in place of them with the single-sample
    ELBO written out, Adam at a constant ``args.baseline_lr``; returns its seconds."""
    encoder.input_loc.zero_()
    encoder.input_scale.fill_(1.0)  # Pyro's example reads the pixels as they are
    params = [*decoder.parameters(), *encoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.baseline_lr)
    num_data, p = train.shape[0], decoder.latent_dim
    batches = minibatches(num_data, args.batch_size, train.device, seed=args.seed)
    start = time.perf_counter()
    for _ in range(args.num_steps):
        x = train[next(batches)]
        out = encoder.net(x)
        loc, scale = out[:, :p], softplus(out[:, p:])
        z = loc + scale * torch.randn_like(loc)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - HALF_LOG_2PI).sum(-1)
        log_prior = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
        log_lik = -binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
        loss = -(num_data / x.shape[0]) * (log_lik + log_prior - log_q).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    settings = dict(
        data="digits28", likelihood="bernoulli", hidden=(400,), latent_dim=50, heldout_fraction=0.2,
        num_steps=args.num_steps, batch_size=args.batch_size, eval_particles=args.eval_particles,
        gap_rows=args.gap_rows, eval_rows=args.eval_rows, seed=args.seed, progress=False,
        device=args.device,
    )  # fmt: skip
    if args.lr is not None:
        settings["lr"] = args.lr
    config = make_config("vae", **settings)
    prepared = pipeline.prepare(config)
    ours = pipeline.fit(prepared)
    m = ours.metrics
    pyro.set_rng_seed(args.seed)  # the same initial networks as the run's
    decoder = vae_job.build_decoder(config, prepared.data)
    encoder = vae_job.build_guide(config, prepared.data)
    encoder.name = "plain.guide"
    seconds = plain_loop(args, decoder, encoder, prepared.data)
    fixed = poutine.block(vae.model, hide_types=["param"])
    estimate = importance_estimate(
        fixed, encoder, prepared.heldout, num_samples=m["eval_particles"], decoder=decoder
    )
    plain = {"heldout_log_likelihood_per_datum": float(estimate.log_likelihood.mean())}
    plain |= {"heldout_elbo_per_datum": float(estimate.elbo.mean()), "svi_seconds": seconds}
    keys = ("lr", "eval_particles", "heldout_log_likelihood_per_datum", "heldout_elbo_per_datum")
    keys += ("svi_seconds",)
    keys += ("approximation_gap_per_datum", "amortisation_gap_per_datum", "gap_rows")
    keys += ("eval_rows", "eval_budget", "eval_seconds", "seconds", "eval_seconds_fraction")
    result = {
        "settings": {**vars(args), "torch": torch.__version__, "pyro": pyro.__version__},
        "ours": {key: m[key] for key in keys},
        "plain_loop": {"lr": args.baseline_lr, **plain},
        "gap_heldout_log_likelihood": plain["heldout_log_likelihood_per_datum"]
        - m["heldout_log_likelihood_per_datum"],
    }
    if args.rescore_particles:  # the same trained networks, scored again with another K
        trained = {
            "ours": (ours.setup.guide, ours.setup.model_kwargs["decoder"]),
            "plain_loop": (encoder, decoder),
        }
        for side, (guide, net) in trained.items():
            again = importance_estimate(
                fixed, guide, prepared.heldout, num_samples=args.rescore_particles, decoder=net
            )
            result[side]["rescored_heldout_log_likelihood_per_datum"] = float(again.log_likelihood.mean())
    return result


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=1250)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--eval-particles",
        type=int,
        default=None,
        help="K, for both sides' held-out log p(x); None: the run's default (from --eval-budget)",
    )
    parser.add_argument(
        "--rescore-particles", type=int, default=None, help="K to score both sides' networks again with"
    )
    parser.add_argument("--lr", type=float, default=None, help="ours; None: the run's default")
    parser.add_argument("--gap-rows", type=int, default=None, help="ours; None: the run's default")
    parser.add_argument("--eval-rows", type=int, default=None, help="ours; None: the run's default")
    parser.add_argument("--baseline-lr", type=float, default=1e-3, help="the plain loop's constant rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both sides")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(main(parse()), indent=1))
