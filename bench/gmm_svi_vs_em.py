"""Benchmark: how long SVI takes to reach what exact EM reaches, on the same mixture from the same start.

The data are drawn from a known full-covariance Gaussian mixture (``bench/gmm_em.py``'s
``make_mixture``; default N = 20,000, D = 4, K = 5, seeded). EM (:func:`inference.em.em_gmm`) runs
from the k-means++ start to convergence (``--em-tol`` nats per datum); its final mean
log-likelihood L_EM sets the target L_EM - 1e-3 |L_EM| (``--rel-tol``), the tolerance of
``tests/inference/test_svi.py``. SVI then runs from the same start with the exact guide
(``guides.gmm_posterior``: q(c) = p(c | x), c enumerated, so the ELBO is log p(x) itself), once
with the full data each step and once with minibatches, built as :func:`inference.svi.fit_svi`
builds its loop (the same ELBO, parameter collection, fused Adam and 10x learning-rate decay over
``--max-steps``). Every ``--eval-every`` steps the clock stops, the exact mean log-likelihood is
evaluated at the current parameters (``gallery.models.gmm.log_likelihood``, untimed) and the run stops
once it reaches the target. Reported: EM's time (``baseline_s``), the full-batch SVI's time to
the target (``ours_s``) and the minibatch SVI's (``minibatch_s``), their ratios to EM, and the
steps each needed. EM crosses the target long before it converges, so the time of EM stopped at
the first iteration past the target (``em_to_target_s``) is reported too. Each SVI variant first
runs a few untimed steps (first-call costs); then the runs take turns within each repeat, and
medians are reported. Prints one JSON object.

References:
    1. M. D. Hoffman, D. M. Blei, C. Wang and J. Paisley, "Stochastic Variational Inference",
       JMLR 14, 2013.
    2. C. M. Bishop, "Pattern Recognition and Machine Learning", Springer 2006, section 9.2.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import pyro
import torch
from arguments import require_at_least_one
from gmm_em import DTYPES, initial_params, make_mixture, resolve_device, sample, settings, sync

import guides
from gallery.models import gmm
from gallery.models.gmm import GMMParams
from inference.em import em_gmm
from inference.svi import collect_params, make_elbo, make_optimizer, minibatches, svi_step, uses_enumeration


def run_em(data: torch.Tensor, init: GMMParams, max_iters: int, tol: float) -> tuple[float, object]:
    """(seconds, EMResult) of EM until the log-likelihood changes by less than ``tol`` per datum."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sync(data.device)
        start = time.perf_counter()
        result = em_gmm(data, init, max_iters=max_iters, tol=tol, dtype=data.dtype)
        sync(data.device)
    return time.perf_counter() - start, result


def svi_to_target(
    data: torch.Tensor,
    init: GMMParams,
    target: float,
    batch_size: int | None,
    args,
    max_steps: int | None = None,
) -> dict:
    """SVI with the exact guide until the exact mean log-likelihood reaches ``target`` or
    ``max_steps`` (default ``--max-steps``); the clock runs only over the steps, not over the
    checks."""
    max_steps = max_steps or args.max_steps
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    num_data = data.shape[0]
    kwargs = {"num_components": init.num_components, "init": init}
    batches = minibatches(num_data, batch_size, data.device, args.seed)
    subsample = next(batches)
    model, guide = gmm.model, guides.gmm_posterior
    elbo = make_elbo(uses_enumeration(model, guide, data, subsample=subsample, **kwargs))

    def loss_fn(subsample: torch.Tensor | None) -> torch.Tensor:
        return elbo.differentiable_loss(model, guide, data, subsample=subsample, **kwargs)

    _, named_params = collect_params(loss_fn, subsample)  # creates the parameters, as fit_svi does
    params = list(named_params.values())
    optimizer, schedule = make_optimizer(params, lr=args.lr, num_steps=args.max_steps)
    seconds, step, log_lik = 0.0, 0, float("-inf")
    with pyro.validation_enabled(False):
        while step < max_steps and log_lik < target:
            sync(data.device)
            start = time.perf_counter()
            for _ in range(min(args.eval_every, max_steps - step)):
                svi_step(loss_fn, params, optimizer, subsample)
                schedule.step()
                subsample = next(batches)
                step += 1
            sync(data.device)
            seconds += time.perf_counter() - start
            with torch.no_grad():
                log_lik = float(gmm.log_likelihood(data, gmm.current_params()).mean())
    return {"seconds": seconds, "steps": step, "reached": log_lik >= target, "log_likelihood": log_lik}


def main(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    num_data = args.num_data or (5_000 if args.quick else 20_000)
    repeats = args.repeats or (3 if args.quick else 5)
    batch_size = min(args.batch_size, num_data)
    truth = make_mixture(args.components, args.obs_dim, args.seed)
    data_cpu = sample(truth, num_data, args.seed + 1)
    init = initial_params(data_cpu, args.components, args.seed).to(device=device, dtype=dtype)
    data = data_cpu.to(device=device, dtype=dtype)

    run_em(data, init, 1, 0.0)  # warm-up: CUDA context, kernels, first-call costs of each path
    for batch in (None, batch_size):
        svi_to_target(data, init, math.inf, batch, args, max_steps=2 * args.eval_every)
    _, em = run_em(data, init, args.em_max_iters, args.em_tol)
    em_ll = float(em.log_likelihoods[-1])
    target = em_ll - args.rel_tol * abs(em_ll)
    em_iters_to_target = int((em.log_likelihoods >= target).nonzero()[0])
    times: dict[str, list[float]] = {"em": [], "em_to_target": [], "svi": [], "svi_minibatch": []}
    runs: dict[str, dict] = {}
    for repeat in range(repeats):
        order = list(times) if repeat % 2 == 0 else list(reversed(times))
        for name in order:
            if name == "em":
                seconds, _ = run_em(data, init, args.em_max_iters, args.em_tol)
            elif name == "em_to_target":
                seconds, _ = run_em(data, init, em_iters_to_target, 0.0)
            else:
                runs[name] = svi_to_target(data, init, target, None if name == "svi" else batch_size, args)
                seconds = runs[name]["seconds"]
            times[name].append(seconds)

    median = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "ours_s": median["svi"],
        "baseline_s": median["em"],
        "ratio": median["svi"] / median["em"],
        "minibatch_s": median["svi_minibatch"],
        "minibatch_ratio": median["svi_minibatch"] / median["em"],
        "svi_steps": runs["svi"]["steps"],
        "minibatch_steps": runs["svi_minibatch"]["steps"],
        "minibatch_epochs": runs["svi_minibatch"]["steps"] * batch_size / num_data,
        "svi_reached": runs["svi"]["reached"],
        "minibatch_reached": runs["svi_minibatch"]["reached"],
        "svi_s_per_step": median["svi"] / runs["svi"]["steps"],
        "minibatch_s_per_step": median["svi_minibatch"] / runs["svi_minibatch"]["steps"],
        "target_log_likelihood": target,
        "em_log_likelihood": em_ll,
        "em_iters": em.num_iters,
        "em_converged": em.converged,
        "em_iters_to_target": em_iters_to_target,
        "em_to_target_s": median["em_to_target"],
        "ratio_to_em_at_target": median["svi"] / median["em_to_target"],
        "svi_log_likelihood": runs["svi"]["log_likelihood"],
        "minibatch_log_likelihood": runs["svi_minibatch"]["log_likelihood"],
        "start_log_likelihood": float(em.log_likelihoods[0]),
        "repeats_s": times,
        "settings": settings(args, device)
        | {
            "num_data": num_data,
            "obs_dim": args.obs_dim,
            "components": args.components,
            "covariance_type": "full",
            "rel_tol": args.rel_tol,
            "em_tol": args.em_tol,
            "em_max_iters": args.em_max_iters,
            "guide": "gmm_posterior (exact)",
            "lr": args.lr,
            "lr_decay": f"10x over max_steps={args.max_steps}",
            "batch_size": batch_size,
            "eval_every": args.eval_every,
            "repeats": repeats,
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float64", choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="N = 5,000, 3 repeats (default 20,000, 5)")
    parser.add_argument("--num-data", type=int, default=None)
    parser.add_argument("--obs-dim", type=int, default=4)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--rel-tol", type=float, default=1e-3, help="target: EM's log p(x) - rel_tol |it|")
    parser.add_argument("--em-tol", type=float, default=1e-10, help="EM's convergence, nats per datum")
    parser.add_argument("--em-max-iters", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=1000, help="for the minibatch run")
    parser.add_argument("--max-steps", type=int, default=3000, help="SVI's cap; the lr decays 10x over it")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between log p(x) checks")
    parser.add_argument("--repeats", type=int, default=None, help="the median over repeats is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    require_at_least_one(parser, args, "num_data", "repeats", "threads", "obs_dim", "components")
    require_at_least_one(parser, args, "em_max_iters", "batch_size", "max_steps", "eval_every")
    if not (args.rel_tol > 0 and args.lr > 0 and args.em_tol >= 0):
        parser.error("--rel-tol and --lr must be positive, --em-tol at least 0")
    if args.num_data is not None and args.num_data < args.components:
        parser.error("--num-data must be at least --components")
    return args


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
