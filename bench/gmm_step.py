"""Benchmark: one minibatch SVI step of the Gaussian mixture, eager against compiled.

The gallery's mixture (K components, full covariances, ``gallery.models.gmm``) with its exact
guide q(c_n) = p(c_n | x_n), c summed out by ``TraceEnum_ELBO``, fitted by SVI on B rows of N per
step, as ``fit_svi`` builds it (``make_elbo``, ``collect_params``, Adam with the LambdaLR decay).
The variants differ only in how the step runs: ``off`` (eager Pyro, the baseline), ``graph``
(the step traced once into one graph, ``fit_svi(compile="graph")``) and ``inductor`` (that
graph compiled by ``torch.compile``), see :mod:`inference.compiled`. Every variant starts from
the same parameters and sees the same minibatches; the exact guide draws nothing, so its losses
are a function of those alone: ``graph`` must equal ``off`` bit for bit (reported as
``graph_equals_eager``), ``inductor`` to rounding (``inductor_max_rel_diff``). The first step of
each variant is untimed: its seconds (the trace and the compile) are ``first_step_s``. The
variants take turns within each repeat, so a busy machine slows them alike; medians are
reported. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from itertools import islice

import pyro
import torch
from arguments import require_at_least_one
from gmm_em import make_mixture, sample
from timing import device_name, seconds_per_step

from gallery.models import gmm
from inference.compiled import CompiledStep, compiled_svi_step
from inference.svi import collect_params, make_elbo, make_optimizer, minibatches, svi_step, uses_enumeration

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODES = ("off", "graph", "inductor")
LR = 0.05  # the gallery's default for the mixture


def build_step(data: torch.Tensor, init, first: torch.Tensor, num_steps: int, mode: str):
    """``step(subsample) -> loss``: one Adam step of the mixture's exact-guide SVI, compiled as
    ``fit_svi(compile=mode)`` compiles it; the current param-store scope holds its parameters."""
    kwargs = dict(num_components=init.num_components, init=init)
    enumerated = uses_enumeration(gmm.model, gmm.posterior_guide, data, subsample=first, **kwargs)
    elbo = make_elbo(enumerated)

    def loss_fn(subsample: torch.Tensor) -> torch.Tensor:
        return elbo.differentiable_loss(gmm.model, gmm.posterior_guide, data, subsample=subsample, **kwargs)

    _, named = collect_params(loss_fn, first)
    params = list(named.values())
    optimizer, schedule = make_optimizer(params, lr=LR, num_steps=num_steps)
    compiled = None if mode == "off" else CompiledStep(loss_fn, params, mode)

    def step(subsample: torch.Tensor) -> torch.Tensor:
        if compiled is None:
            loss = svi_step(loss_fn, params, optimizer, subsample)
        else:
            loss = compiled_svi_step(compiled, params, optimizer, subsample)
        schedule.step()
        return loss

    return step


def main(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA GPU; use --device cpu")
    truth = make_mixture(args.components, args.obs_dim, args.seed)
    data = sample(truth, args.num_data, args.seed).to(device=device, dtype=dtype)
    init = gmm.init_params(data, args.components, generator=torch.Generator().manual_seed(args.seed))
    total = 1 + args.warmup + args.steps * args.repeats
    batches = list(islice(minibatches(args.num_data, args.batch_size, device, args.seed), total))
    first, warmup = batches[0], batches[1 : args.warmup + 1]
    timed = [batches[1 + args.warmup + r * args.steps :][: args.steps] for r in range(args.repeats)]

    store = pyro.get_param_store()
    scopes, steps, first_step_s, losses = {}, {}, {}, {}
    with pyro.validation_enabled(False):
        for mode in args.modes:
            with store.scope() as scopes[mode]:
                steps[mode] = build_step(data, init, first, total, mode)
                losses[mode] = []
                first_step_s[mode] = seconds_per_step(steps[mode], [first], device, losses[mode])
                seconds_per_step(steps[mode], warmup, device, losses[mode])
        times = {mode: [] for mode in args.modes}
        for chunk in timed:  # the variants take turns, so machine load drifts hit them alike
            for mode in args.modes:
                with store.scope(scopes[mode]):
                    times[mode].append(seconds_per_step(steps[mode], chunk, device, losses[mode]))
    median = {mode: statistics.median(ts) for mode, ts in times.items()}
    history = {mode: torch.stack(values).double().cpu() for mode, values in losses.items()}
    result = {f"{mode}_s": median[mode] for mode in args.modes}
    base = args.modes[0]
    result |= {f"{mode}_ratio": median[mode] / median[base] for mode in args.modes[1:]}
    result["first_step_s"] = first_step_s
    if "graph" in history and "off" in history:
        result["graph_equals_eager"] = torch.equal(history["graph"], history["off"])
    if "inductor" in history and "off" in history:
        rel = (history["inductor"] - history["off"]).abs() / history["off"].abs()
        result["inductor_max_rel_diff"] = float(rel.max())
    result["repeats_s"] = times
    result["settings"] = {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": args.dtype,
        "num_data": args.num_data,
        "batch_size": args.batch_size,
        "components": args.components,
        "obs_dim": args.obs_dim,
        "baseline": base,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float64", choices=list(DTYPES))
    parser.add_argument("--num-data", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--obs-dim", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="steps timed per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="the median over repeats is reported")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--modes",
        type=lambda text: text.split(","),
        default=list(MODES),
        help="comma-separated, of off, graph, inductor; the first is the baseline of the ratios",
    )
    args = parser.parse_args(argv)
    require_at_least_one(parser, args, "num_data", "batch_size", "components", "obs_dim", "steps", "repeats")
    require_at_least_one(parser, args, "threads")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.batch_size > args.num_data:
        parser.error("--batch-size must be at most --num-data")
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    return args


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
