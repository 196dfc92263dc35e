"""Benchmark: one SVI step of the gallery's VAE against a plain PyTorch training loop.

Both sides fit the same VAE (Kingma and Welling 2014, Pyro's VAE example [1]: 784-400-z50 with
ReLU, Bernoulli pixels, Adam at lr 1e-3) with the same single-sample reparameterised estimator

    -ELBO ~= -(N / B) sum_{n in batch} [log p(x_n | z_n) + log p(z_n) - log q(z_n | x_n)],
    z_n = loc(x_n) + scale(x_n) * eps_n,  eps_n ~ N(0, I),

on the same device-resident synthetic binary data and the same minibatches. "Ours" is the library's
own path, built as :func:`inference.svi.fit_svi` builds it (``make_elbo``, ``collect_params``, Adam
with the LambdaLR decay) and timed as ``svi_step`` + ``schedule.step()``; the baseline is an
``nn.Module`` with the densities written out. Before timing, both are evaluated at identical weights
and identical eps (the RNG seeded before each call) and must agree in loss and gradient. Pyro's
stock ``SVI`` with ``Trace_ELBO`` and ``JitTrace_ELBO`` are timed as extra figures. The variants
take turns within each repeat, so a busy machine slows them alike. Prints one JSON object.

Compiled rows (``--compiled``, the default): ours with ``compile="graph"`` and ``"inductor"``
(:mod:`inference.compiled`, the step as ``fit_svi(compile=...)`` runs it), and the baseline's
loss under ``torch.compile`` (the hand-written compiled step: its backward compiled by
AOTAutograd, Adam as in every row). Their first call, untimed, traces and compiles; its seconds
are reported as ``compile_s``.

References:
    1. Pyro's VAE tutorial, https://pyro.ai/examples/vae.html (``examples/vae/vae.py``).
    2. D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from itertools import islice

import pyro
import torch
from arguments import require_at_least_one
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from timing import device_name, seconds_per_step
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits, softplus

from gallery.models import vae
from guides import AmortisedNormal
from inference.compiled import CompiledStep, compiled_svi_step
from inference.svi import collect_params, make_elbo, make_optimizer, minibatches, svi_step, uses_enumeration

LR, FINAL_LR_RATIO = 1e-3, 0.1  # Pyro's VAE example; fit_svi's default decay
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MATCH_RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}  # rounding only; a different estimator is O(1)

Step = Callable[[Tensor], object]  # one training step on the minibatch with these (B,) indices


def make_data(num_data: int, obs_dim: int, seed: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(N, d) binary pixels from a random rank-10 logistic model, so the VAE has structure to find."""
    gen = torch.Generator().manual_seed(seed)
    rank = min(10, obs_dim)
    logits = torch.randn(num_data, rank, generator=gen) @ torch.randn(rank, obs_dim, generator=gen)
    return torch.bernoulli(torch.sigmoid(logits), generator=gen).to(device=device, dtype=dtype)


def build_vae(args, data: Tensor) -> tuple[vae.Decoder, AmortisedNormal]:
    """The library's decoder and amortised guide, from the seed alone (every variant starts alike)."""
    torch.manual_seed(args.seed)
    decoder = vae.Decoder(
        args.obs_dim, args.latent_dim, hidden=(args.hidden,), activation="relu", likelihood=args.likelihood
    )
    guide = AmortisedNormal(
        args.obs_dim, args.latent_dim, hidden=(args.hidden,), activation="relu", covariance="diag"
    )
    return decoder.to(data), guide.to(data)


def lr_lambda(total_steps: int) -> Callable[[int], float]:
    return lambda t: FINAL_LR_RATIO ** (t / total_steps)


def ours(args, data: Tensor, first: Tensor, total_steps: int, compile: str = "off"):
    """(step, loss_fn, named params, decoder, guide), set up exactly as ``fit_svi`` sets them up,
    with its step compiled as ``fit_svi(compile=...)`` compiles it."""
    decoder, guide = build_vae(args, data)
    enumerate_discrete = uses_enumeration(vae.model, guide, data, subsample=first, decoder=decoder)
    elbo = make_elbo(enumerate_discrete, num_particles=1)

    def loss_fn(subsample: Tensor | None) -> Tensor:
        return elbo.differentiable_loss(vae.model, guide, data, subsample=subsample, decoder=decoder)

    _, named_params = collect_params(loss_fn, first)
    params = list(named_params.values())
    optimizer, schedule = make_optimizer(params, lr=LR, num_steps=total_steps, final_lr_ratio=FINAL_LR_RATIO)

    compiled = None if compile == "off" else CompiledStep(loss_fn, params, compile)

    def step(subsample: Tensor) -> Tensor:
        if compiled is None:
            loss = svi_step(loss_fn, params, optimizer, subsample)
        else:
            loss = compiled_svi_step(compiled, params, optimizer, subsample)
        schedule.step()
        return loss

    return step, loss_fn, named_params, decoder, guide


class PlainVAE(nn.Module):
    """The same encoder and decoder as plain ``nn.Sequential``s, the -ELBO estimate written out."""

    def __init__(self, obs_dim: int, latent_dim: int, hidden: int, likelihood: str):
        super().__init__()
        self.latent_dim, self.likelihood = latent_dim, likelihood
        self.encoder = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, obs_dim))
        gaussian = likelihood == "gaussian"
        self.log_noise_variance = nn.Parameter(torch.zeros(())) if gaussian else None

    def forward(self, x: Tensor, num_data: int) -> Tensor:
        """(B, d) minibatch -> () -ELBO estimate scaled to the N data points."""
        out = self.encoder(x)  # (B, 2p)
        loc, scale = out[:, : self.latent_dim], softplus(out[:, self.latent_dim :])  # (B, p)
        z = loc + scale * torch.empty_like(loc).normal_()  # (B, p), as Normal.rsample draws eps
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - HALF_LOG_2PI).sum(-1)  # (B,)
        log_prior = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
        f = self.decoder(z)  # (B, d)
        if self.likelihood == "bernoulli":
            log_lik = -binary_cross_entropy_with_logits(f, x, reduction="none").sum(-1)
        else:
            log_var = self.log_noise_variance
            log_lik = (-0.5 * (x - f) ** 2 / log_var.exp() - 0.5 * log_var - HALF_LOG_2PI).sum(-1)
        return -(num_data / x.shape[0]) * (log_lik + log_prior - log_q).sum()


def baseline(
    args, data: Tensor, decoder: vae.Decoder, guide: AmortisedNormal, total_steps: int, compiled: bool = False
):
    """(step, module): the plain loop, starting from the weights of ``decoder`` and ``guide``;
    with ``compiled`` its loss (and so its backward) under ``torch.compile``."""
    plain = PlainVAE(args.obs_dim, args.latent_dim, args.hidden, args.likelihood).to(data)
    plain.encoder.load_state_dict(guide.net.state_dict())
    plain.decoder.load_state_dict(decoder.net.state_dict())
    if plain.log_noise_variance is not None:
        plain.log_noise_variance.data.copy_(decoder.log_noise_variance.detach())
    # the same optimiser as ours (fused Adam where available): the ratio measures Pyro, not Adam
    optimizer, schedule = make_optimizer(
        list(plain.parameters()), lr=LR, num_steps=total_steps, final_lr_ratio=FINAL_LR_RATIO
    )
    num_data = data.shape[0]
    forward = torch.compile(plain, fullgraph=True, dynamic=False) if compiled else plain

    def step(subsample: Tensor) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = forward(data[subsample], num_data)
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.detach()

    return step, plain


def check_same_estimator(args, loss_fn, named_params: dict[str, Tensor], plain: PlainVAE, data, subsample):
    """Loss and gradient of both at the same weights and eps: ``(loss_match, grad_match, ours,
    baseline)``, relative differences. Raises if they differ by more than rounding."""
    torch.manual_seed(args.seed + 1)
    ours_loss = loss_fn(subsample)
    ours_grads = torch.autograd.grad(ours_loss, list(named_params.values()))
    torch.manual_seed(args.seed + 1)
    plain_loss = plain(data[subsample], data.shape[0])
    by_name = dict(plain.named_parameters())
    decoder = "vae.decoder"  # the model's pyro.module name; the encoder's is given on first use
    encoder = next(name.split("$$$")[0] for name in named_params if not name.startswith(f"{decoder}$$$"))
    pairs = {f"encoder.{k}": f"{encoder}$$$net.{k}" for k in plain.encoder.state_dict()}
    pairs |= {f"decoder.{k}": f"{decoder}$$$net.{k}" for k in plain.decoder.state_dict()}
    if plain.log_noise_variance is not None:
        pairs["log_noise_variance"] = f"{decoder}$$$log_noise_variance"
    if set(pairs.values()) != set(named_params):
        raise RuntimeError(f"parameter names differ: {sorted(named_params)} vs {sorted(pairs.values())}")
    plain_grads = torch.autograd.grad(plain_loss, [by_name[k] for k in pairs])
    ours_by_name = dict(zip(named_params, ours_grads, strict=True))
    ours_loss, plain_loss = ours_loss.detach(), plain_loss.detach()
    loss_match = float((ours_loss - plain_loss).abs() / plain_loss.abs())
    grad_match = max(
        float((ours_by_name[ours_name] - g).norm() / g.norm().clamp_min(1e-30))
        for ours_name, g in zip(pairs.values(), plain_grads, strict=True)
    )
    tol = MATCH_RTOL[data.dtype]
    if not (loss_match < tol and grad_match < 100 * tol):
        raise RuntimeError(
            f"the baseline is not the same estimator: relative loss difference {loss_match:.2e}, "
            f"gradient difference {grad_match:.2e} (tolerance {tol:.0e}); fix PlainVAE before timing"
        )
    return loss_match, grad_match, float(ours_loss), float(plain_loss)


def pyro_svi(args, data: Tensor, total_steps: int, jit: bool) -> Step:
    """Pyro's stock ``SVI.step`` with Adam and LambdaLR from ``pyro.optim``. ``JitTrace_ELBO``
    needs every tensor input positional (it compiles once per distinct keyword value), hence the
    thin wrappers that pass ``subsample`` by position."""
    decoder, guide = build_vae(args, data)
    optim = pyro.optim.LambdaLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": LR}, "lr_lambda": lr_lambda(total_steps)}
    )
    if jit:
        svi = SVI(
            lambda x, ind: vae.model(x, subsample=ind, decoder=decoder),
            lambda x, ind: guide(x, subsample=ind, decoder=decoder),
            optim,
            loss=JitTrace_ELBO(ignore_jit_warnings=True),
        )
    else:
        svi = SVI(vae.model, guide, optim, loss=Trace_ELBO())

    def step(subsample: Tensor) -> float:
        loss = svi.step(data, subsample) if jit else svi.step(data, subsample=subsample, decoder=decoder)
        optim.step()
        return loss

    return step


def main(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA GPU; use --device cpu")
    quick_steps, quick_repeats = (20, 3) if args.quick else (100, 5)
    steps, repeats = args.steps or quick_steps, args.repeats or quick_repeats
    num_data = args.num_data or 16 * args.batch_size
    total_steps = args.warmup + steps * repeats
    data = make_data(num_data, args.obs_dim, args.seed, device, dtype)
    batches = list(islice(minibatches(num_data, args.batch_size, device, args.seed), total_steps + 1))
    first, warmup = batches[0], batches[1 : args.warmup + 1]
    timed = [batches[1 + args.warmup + r * steps :][:steps] for r in range(repeats)]

    param_store = pyro.get_param_store()
    scopes, variants, errors = {}, {}, {}
    with param_store.scope() as scopes["ours"]:
        variants["ours"], loss_fn, named_params, decoder, guide = ours(args, data, first, total_steps)
    variants["baseline"], plain = baseline(args, data, decoder, guide, total_steps)
    with pyro.validation_enabled(False), param_store.scope(scopes["ours"]):
        match = check_same_estimator(args, loss_fn, named_params, plain, data, first)
    for name, jit in (("pyro_svi", False), ("pyro_jit_svi", True)):
        try:
            with param_store.scope() as scopes[name], pyro.validation_enabled(False):
                variants[name] = pyro_svi(args, data, total_steps, jit)
                variants[name](first)  # JitTrace_ELBO compiles here
        except Exception as error:  # recorded in the output in place of a time
            errors[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
            variants.pop(name, None)

    compile_s = {}
    if args.compiled:
        for name, mode in (("graph", "graph"), ("inductor", "inductor"), ("baseline_compiled", None)):
            with param_store.scope() as scopes[name], pyro.validation_enabled(False):
                if mode is None:
                    _, _, _, decoder_c, guide_c = ours(args, data, first, total_steps)
                    variants[name], _ = baseline(args, data, decoder_c, guide_c, total_steps, compiled=True)
                else:
                    variants[name] = ours(args, data, first, total_steps, compile=mode)[0]
                start = time.perf_counter()
                variants[name](first)  # traces and compiles
                compile_s[name] = time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    with pyro.validation_enabled(False):
        for name, step in variants.items():
            if warmup:
                with param_store.scope(scopes.get(name)):
                    seconds_per_step(step, warmup, device)
        for chunk in timed:  # the variants take turns, so machine load drifts hit them alike
            for name, step in variants.items():
                with param_store.scope(scopes.get(name)):
                    times[name].append(seconds_per_step(step, chunk, device))

    median = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "ours_s": median["ours"],
        "baseline_s": median["baseline"],
        "ratio": median["ours"] / median["baseline"],
    }
    for name in ("pyro_svi", "pyro_jit_svi"):
        result[f"{name}_s"] = median.get(name, errors.get(name))
        result[f"{name}_ratio"] = median[name] / median["baseline"] if name in median else None
    for name in ("graph", "inductor", "baseline_compiled"):
        result[f"{name}_s"] = median.get(name)
        result[f"{name}_ratio"] = median[name] / median["baseline"] if name in median else None
    if args.compiled:
        result["inductor_vs_baseline_compiled"] = median["inductor"] / median["baseline_compiled"]
        result["graph_vs_ours"] = median["graph"] / median["ours"]
        result["compile_s"] = compile_s
    loss_match, grad_match, ours_loss, plain_loss = match
    result |= {
        "loss_match": loss_match,
        "grad_match": grad_match,
        "loss_at_init": {"ours": ours_loss, "baseline": plain_loss},
        "repeats_s": times,
        "settings": {
            "device": str(device),
            "device_name": device_name(device),
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "num_data": num_data,
            "architecture": f"{args.obs_dim}-{args.hidden}-z{args.latent_dim}, relu, diag-normal q",
            "likelihood": args.likelihood,
            "lr": LR,
            "steps": steps,
            "repeats": repeats,
            "warmup": args.warmup,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "python": platform.python_version(),
        },
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="20 steps x 3 repeats (default 100 x 5)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-data", type=int, default=None, help="default 16 x batch size")
    parser.add_argument("--obs-dim", type=int, default=784)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--likelihood", default="bernoulli", choices=["gaussian", "bernoulli"])
    parser.add_argument("--steps", type=int, default=None, help="steps timed per repeat")
    parser.add_argument("--repeats", type=int, default=None, help="the median over repeats is reported")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-compiled",
        dest="compiled",
        action="store_false",
        help="leave out the compiled rows (graph, inductor, the baseline under torch.compile)",
    )
    args = parser.parse_args(argv)
    require_at_least_one(parser, args, "batch_size", "obs_dim", "hidden", "latent_dim")
    require_at_least_one(parser, args, "steps", "repeats", "num_data", "threads")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.num_data is not None and args.num_data < args.batch_size:
        parser.error("--num-data must be at least --batch-size")
    return args


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
