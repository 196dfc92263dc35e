"""The ``run vae`` job: split the data, fit the VAE by SVI, and evaluate the ELBO, the
importance-weighted log p(x) (Burda et al. 2016) and the inference gaps (Cremer et al. 2018)
on held-out data; with a linear Gaussian decoder, PPCA's exact answers too.

With ``--num-processes W`` every process splits the data and builds the networks the same way
from the seed and trains on its shard of the training rows; rank 0 evaluates the initial
networks while the others wait in the first broadcast, and the trained ones after SVI.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from torch import Tensor

import guides
from gallery.app.checks import check_processes, check_settings
from gallery.app.config import RunConfig, with_settings
from gallery.app.eval_plan import eval_row_count, network_cost, plan_evaluation
from gallery.app.metrics import Baseline, Evaluation
from gallery.app.resources import check_resources
from gallery.app.stages import Evaluated, Prepared, RunResult, Setup, elbo_trace
from gallery.app.vae_watch import DivergenceWatch
from gallery.data import datasets
from gallery.data.checks import clock
from gallery.models import conv, linear_gaussian, vae
from inference.em import ppca_max_log_likelihood
from inference.gaps import best_local_estimate, inference_gaps
from inference.importance import importance_estimate
from inference.per_datum import keeps_q_per_datum
from inference.svi import SVIResult

VAE_GUIDES = ("amortised", "amortised-full", "amortised-flow", "mean-field")


def prepare(config: RunConfig, dataset: datasets.Dataset | None = None) -> Prepared:
    """Load (or take ``dataset``), scale, check and split the data; raises ``ValueError`` with
    what to change."""
    if config.data.stream:
        raise ValueError(
            "--stream is for gmm, factor-analysis and ppca; the vae reads its data into memory "
            "(drop --stream)"
        )
    if config.guide not in VAE_GUIDES:
        raise ValueError(
            f"guide {config.guide!r} does not fit the vae; choose one of {', '.join(VAE_GUIDES)}"
        )
    device = check_settings(config, {"latent_dim": config.latent_dim, "gap_steps": config.vae.gap_steps})
    _check_vae_settings(config)
    data, labels, image_shape, steps = _load(config, dataset)
    num_data, obs_dim = data.shape
    if config.vae.architecture == "conv":
        conv.image_side(obs_dim, image_shape)  # square images with a side divisible by 4, or one line
    if config.latent_dim >= obs_dim and config.vae.decoder == "linear":
        raise ValueError(
            f"--latent-dim {config.latent_dim} must be smaller than the data dimension {obs_dim}"
        )
    perm = torch.randperm(num_data, generator=torch.Generator().manual_seed(config.train.seed))
    fraction = config.vae.heldout_fraction
    num_heldout = round(fraction * num_data)
    if fraction > 0 and num_heldout == 0:
        raise ValueError(f"--heldout-fraction {fraction} of {num_data} rows holds out no row")
    if num_data - num_heldout < 2:
        raise ValueError(f"only {num_data - num_heldout} training rows; lower --heldout-fraction or add data")
    train_rows, heldout_rows = perm[num_heldout:], perm[:num_heldout]
    if not 1 <= config.train.batch_size:
        raise ValueError(f"--batch-size must be at least 1, got {config.train.batch_size}")
    per_datum = keeps_q_per_datum(config.guide, latent=vae.LATENT)
    check_processes(config, num_data - num_heldout, per_datum, batch_size=None)  # clipped to the shard
    config = settle_evaluation(config, obs_dim, num_data - num_heldout, num_heldout)
    check_resources(config, num_data, obs_dim, batch_size=config.train.batch_size, device=device)
    to = dict(device=device, dtype=config.torch_dtype)
    return Prepared(
        config,
        data[train_rows].to(**to),
        None if labels is None else labels[train_rows],
        "+".join(steps) or "none",
        heldout=data[heldout_rows].to(**to) if num_heldout else None,
        heldout_labels=None if labels is None or not num_heldout else labels[heldout_rows],
        image_shape=image_shape,
    )


def settle_evaluation(config: RunConfig, obs_dim: int, num_train: int, num_heldout: int) -> RunConfig:
    """``config`` with ``--eval-particles`` and ``--gap-rows`` settled from ``--eval-budget``
    where they were not given (:func:`gallery.app.eval_plan.plan_evaluation`), counted on the
    networks as torch builds them (the RNG is left as it was)."""
    if config.train.eval_particles is not None and config.vae.gap_rows is not None:
        return config
    with torch.random.fork_rng(devices=[]):
        decoder = make_decoder(config, obs_dim, init_noise_variance=1.0)
        encoder = None if config.guide == "mean-field" else make_encoder(config, obs_dim)
    cost = network_cost(decoder, encoder, obs_dim)
    batch_size = min(config.train.batch_size, -(-num_train // config.train.num_processes))
    plan = plan_evaluation(config, cost, num_train=num_train, num_heldout=num_heldout, batch_size=batch_size)
    return with_settings(config, eval_particles=plan.particles, gap_rows=plan.gap_rows)


def _check_vae_settings(config: RunConfig) -> None:
    settings = config.vae
    particles = config.train.eval_particles
    if particles is not None and particles < 1:
        raise ValueError(f"--eval-particles must be at least 1, got {particles}")
    if settings.eval_rows < 0:
        raise ValueError(f"--eval-rows must be a number of rows or all, got {settings.eval_rows}")
    if settings.gap_rows is not None and settings.gap_rows < 0:
        raise ValueError(f"--gap-rows must be at least 0, got {settings.gap_rows}")
    if not (math.isfinite(settings.eval_budget) and settings.eval_budget > 0):
        raise ValueError(
            f"--eval-budget must be a positive number (the evaluation's cost over SVI's), got "
            f"{settings.eval_budget}"
        )
    if not 0 <= settings.heldout_fraction < 1:
        raise ValueError(f"--heldout-fraction must be in [0, 1), got {settings.heldout_fraction}")
    noise = settings.noise_variance
    if noise is not None and not (math.isfinite(noise) and noise > 0):
        raise ValueError(f"--noise-variance must be a positive number, got {noise}")
    dtype = torch.finfo(config.torch_dtype)
    if noise is not None and not dtype.tiny <= noise <= dtype.max:
        raise ValueError(
            f"--noise-variance {noise!r} is outside what {config.train.dtype} holds ({dtype.tiny:.3g} to "
            f"{dtype.max:.3g}); use a variance in that range"
        )
    if settings.likelihood not in vae.LIKELIHOODS:
        choices = ", ".join(vae.LIKELIHOODS)
        raise ValueError(f"unknown likelihood {settings.likelihood!r}; choose one of {choices}")
    if settings.decoder not in ("mlp", "linear"):
        raise ValueError(f"unknown decoder {settings.decoder!r}; choose mlp or linear")
    if settings.architecture not in conv.ARCHITECTURES:
        raise ValueError(f"unknown architecture {settings.architecture!r}; choose mlp or conv")
    if settings.architecture == "conv" and settings.decoder == "linear":
        raise ValueError("--architecture conv is for the network decoder; drop --decoder linear")
    if settings.activation not in vae.ACTIVATIONS:
        choices = ", ".join(vae.ACTIVATIONS)
        raise ValueError(f"unknown activation {settings.activation!r}; choose one of {choices}")
    if settings.likelihood != "gaussian" and noise is not None:
        raise ValueError(
            "--noise-variance is for the Gaussian likelihood; drop it with --likelihood "
            f"{settings.likelihood}"
        )


def _load(config: RunConfig, dataset: datasets.Dataset | None = None):
    """The data (N, D) scaled to [0, 1] for images (and binarised when asked), its labels, the
    image shape and the steps taken."""
    source = config.data
    if dataset is None and source.name == "mnist":
        if source.data_dir is None:
            raise ValueError("--data mnist needs --data-dir DIR, a folder with MNIST in torchvision's layout")
        dataset = datasets.load_mnist(source.data_dir)
    elif dataset is None:
        dataset = datasets.load(source.name)
    data, steps = dataset.data, []
    if source.name in ("digits", "mnist"):
        top = 16.0 if source.name == "digits" else 255.0
        data = data / top
        steps.append(f"scale-to-unit(/{top:g})")
    if source.binarize:
        data = (data > 0.5).to(data.dtype)
        steps.append("binarize(>0.5)")
    if config.vae.likelihood == "bernoulli" and not bool(((data == 0) | (data == 1)).all()):
        raise ValueError(
            "--likelihood bernoulli needs binary data (0 or 1), and the Bernoulli is no density on grey "
            "values: use --likelihood continuous-bernoulli for values in [0, 1], or pass --binarize to "
            "threshold at 0.5"
        )
    if config.vae.likelihood == "continuous-bernoulli" and not bool(((data >= 0) & (data <= 1)).all()):
        raise ValueError(
            f"--likelihood continuous-bernoulli needs values in [0, 1], got {float(data.min()):.4g} to "
            f"{float(data.max()):.4g}; rescale the data to [0, 1] or use --likelihood gaussian"
        )
    return data, dataset.labels, dataset.image_shape, steps


def make_decoder(config: RunConfig, obs_dim: int, **init) -> vae.Decoder:
    """The decoder of ``config``, as torch builds it (float32, CPU); ``init``: e.g.
    ``init_noise_variance``. :func:`build_decoder` for a run, ``Fitted.load`` to rebuild one."""
    settings = config.vae
    return vae.Decoder(
        obs_dim,
        config.latent_dim,
        hidden=tuple(config.hidden),
        activation=settings.activation,
        likelihood=settings.likelihood,
        noise_variance=settings.noise_variance,
        architecture=settings.architecture,
        **init,
    )


def build_decoder(config: RunConfig, train: Tensor) -> vae.Decoder:
    """The decoder, its output bias at the data mean (Gaussian) or its logit (the Bernoullis)."""
    init_noise_variance = float(train.var(0, correction=0).mean().clamp_min(1e-6))
    decoder = make_decoder(config, train.shape[1], init_noise_variance=init_noise_variance)
    decoder = decoder.to(device=train.device, dtype=train.dtype)
    mean = train.mean(0)
    with torch.no_grad():
        likelihood = config.vae.likelihood
        bias = mean if likelihood == "gaussian" else torch.logit(mean.clamp(1e-3, 1 - 1e-3))
        decoder.net[-1].bias.copy_(bias)
    return decoder


GUIDE_NAME = "vae.guide"


def make_encoder(
    config: RunConfig, obs_dim: int, *, name: str = GUIDE_NAME, **scaling
) -> guides.AmortisedNormal | guides.AmortisedFlow:
    """The amortised encoder of ``config.guide`` (diagonal, full or flow), as torch builds it;
    ``scaling``: ``input_loc``, ``input_scale`` (:func:`guides.input_scaling`)."""
    common = dict(
        hidden=tuple(config.hidden),
        activation=config.vae.activation,
        name=name,
        architecture=config.vae.architecture,
        **scaling,
    )
    if config.guide == "amortised-flow":
        return guides.AmortisedFlow(obs_dim, config.latent_dim, flow_layers=config.flow_layers, **common)
    covariance = "full" if config.guide == "amortised-full" else "diag"
    return guides.AmortisedNormal(obs_dim, config.latent_dim, covariance=covariance, **common)


def build_guide(config: RunConfig, train: Tensor):
    """The amortised encoder (affine with ``--decoder linear``), or per-datapoint tables, named
    ``vae.guide`` in every process (as :func:`guides.registry.make_guide` names the other models'),
    so that a checkpoint, which stores parameters by site name, resumes in this process or another."""
    if config.guide == "mean-field":
        return guides.MeanFieldNormal(train.shape[0], config.latent_dim, name=GUIDE_NAME)
    encoder = make_encoder(config, train.shape[1], **guides.input_scaling(train))
    return encoder.to(device=train.device, dtype=train.dtype)


def setup(prepared: Prepared, parallel=None) -> Setup:
    """Decoder and guide from the seed; on rank 0 the importance estimate at the start."""
    config, train = prepared.config, prepared.data
    start, stop = (0, train.shape[0]) if parallel is None else parallel.shard(train.shape[0])
    pyro.set_rng_seed(config.train.seed)  # the networks are initialised from the global generator
    decoder = build_decoder(config, train)
    guide = build_guide(config, train)
    initial, seconds = None, 0.0
    if parallel is None or parallel.is_root:
        begin, num_samples = clock(train), config.train.eval_particles
        rows = eval_sample(config, train)
        initial = importance_estimate(
            vae.model, guide, train, num_samples=num_samples, rows=rows, decoder=decoder
        )
        seconds = clock(train) - begin
    batch_size = min(config.train.batch_size, stop - start)  # per process
    watch = DivergenceWatch(decoder, guide, config.train.lr)
    kwargs = dict(initial=initial, eval_seconds=seconds, watch=watch)
    return Setup(vae.model, guide, {"decoder": decoder}, batch_size, vae.LATENT, **kwargs)


def eval_sample(config: RunConfig, train: Tensor) -> Tensor:
    """(M,) the indices of the first ``--eval-rows`` training rows (0: all), a fixed random
    sample: the rows were shuffled from the seed before the split."""
    return torch.arange(eval_row_count(config, train.shape[0]), device=train.device)


def evaluate(prepared: Prepared, setup: Setup, svi: SVIResult) -> Evaluated:
    """The importance-weighted log p(x) and ELBO on the ``--eval-rows`` sample of the training
    rows, PPCA's exact answers for a linear Gaussian decoder (on all of them: closed forms),
    and the held-out metrics on every held-out row; the evaluation's seconds, with the start's."""
    config, train, heldout, begin = prepared.config, prepared.data, prepared.heldout, clock(prepared.data)
    rows = eval_sample(config, train)
    decoder, particles = setup.model_kwargs["decoder"], config.train.eval_particles
    trained = importance_estimate(
        vae.model, setup.guide, train, num_samples=particles, rows=rows, decoder=decoder
    )
    evaluation = Evaluation(
        float(trained.elbo.mean()),
        particles,
        float(trained.log_likelihood.mean()),
        float(setup.initial.log_likelihood.mean()),
    )
    extras = {}
    if decoder.linear and config.vae.likelihood == "gaussian":  # PPCA: exact answers exist
        ppca_params = vae.as_ppca(decoder).to(dtype=torch.float64)
        exact = linear_gaussian.log_likelihood(train.double(), ppca_params).mean()
        extras["exact_log_likelihood_per_datum"] = float(exact)
        closed_form = ppca_max_log_likelihood(train.double(), config.latent_dim)
        extras["closed_form_log_likelihood_per_datum"] = float(closed_form)
    if config.guide == "amortised-flow":
        extras["flow_layers"] = config.flow_layers
    extras.update(heldout_metrics(config, setup.guide, decoder, heldout, particles))
    seconds = setup.eval_seconds + clock(prepared.data) - begin
    trailing = {"eval_rows": len(rows), "eval_budget": config.vae.eval_budget, "eval_seconds": seconds}
    return Evaluated(_sizes(prepared, decoder), evaluation, Baseline(), None, extras, trailing=trailing)


def _sizes(prepared: Prepared, decoder: vae.Decoder) -> dict:
    config, gaussian = prepared.config, prepared.config.vae.likelihood == "gaussian"
    return {
        "num_data": prepared.data.shape[0],
        "num_heldout": 0 if prepared.heldout is None else prepared.heldout.shape[0],
        "obs_dim": prepared.data.shape[1],
        "latent_dim": config.latent_dim,
        "decoder": config.vae.decoder,
        "architecture": config.vae.architecture,
        "hidden": list(decoder_hidden(decoder)),
        "activation": config.vae.activation,
        "likelihood": config.vae.likelihood,
        "noise_variance": float(decoder.noise_variance().detach()) if gaussian else None,
        "noise_variance_learned": gaussian and config.vae.noise_variance is None,
    }


def decoder_hidden(decoder: vae.Decoder) -> tuple[int, ...]:
    return tuple(layer.out_features for layer in decoder.net[:-1] if isinstance(layer, torch.nn.Linear))


def heldout_metrics(config: RunConfig, guide, decoder, heldout: Tensor | None, num_samples: int) -> dict:
    """The held-out ELBO and importance-weighted log p(x), and the inference gaps on the first
    ``--gap-rows`` held-out rows, with the decoder fixed. ``None`` without held-out data."""
    keys = (
        "heldout_elbo_per_datum",
        "heldout_log_likelihood_per_datum",
        "gap_rows",
        "approximation_gap_per_datum",
        "amortisation_gap_per_datum",
    )
    result = dict.fromkeys(keys)
    result["heldout_eval_particles"] = num_samples if heldout is not None else None
    if heldout is None:
        return result
    local = dict(num_steps=config.vae.gap_steps, num_samples=num_samples, seed=config.train.seed)
    local |= dict(progress=config.train.progress, decoder=decoder)
    if keeps_q_per_datum(guide):  # no encoder: fit q per held-out row
        estimate = best_local_estimate(vae.model, heldout, latent_dim=config.latent_dim, **local)
    else:
        fixed_model = poutine.block(vae.model, hide_types=["param"])
        estimate = importance_estimate(fixed_model, guide, heldout, num_samples=num_samples, decoder=decoder)
    result["heldout_elbo_per_datum"] = float(estimate.elbo.mean())
    result["heldout_log_likelihood_per_datum"] = float(estimate.log_likelihood.mean())
    if isinstance(guide, guides.AmortisedNormal | guides.AmortisedFlow) and config.vae.gap_rows > 0:
        gaps = inference_gaps(vae.model, guide, heldout[: config.vae.gap_rows], **local)
        result["gap_rows"] = gaps.num_data
        result["approximation_gap_per_datum"] = gaps.approximation
        result["amortisation_gap_per_datum"] = gaps.amortisation
    return result


def files(result: RunResult) -> dict[str, bytes]:
    """``params.pt``, ``training_curve.png`` and the decoder's and encoder's figures: samples,
    reconstructions and latent means of held-out data (training data without an encoder)."""
    from gallery.report.figures import vae as vae_figures
    from gallery.report.outputs import curve_png, module_params, params_bytes

    metrics, prepared = result.metrics, result.prepared
    decoder, guide = result.setup.model_kwargs["decoder"], result.guide
    heldout_known = prepared.heldout is not None and not keeps_q_per_datum(guide)
    shown, labels, which = (
        (prepared.heldout, prepared.heldout_labels, "held-out")
        if heldout_known
        else (prepared.data, prepared.labels, "training")
    )
    lines = {
        "ELBO (train)": metrics["elbo_per_datum"],
        "log p(x) IW (train)": metrics["log_likelihood_per_datum"],
    }
    if metrics["heldout_elbo_per_datum"] is not None:
        lines["ELBO (held out)"] = metrics["heldout_elbo_per_datum"]
    if "closed_form_log_likelihood_per_datum" in metrics:
        lines["PPCA max log p(x) (train)"] = metrics["closed_form_log_likelihood_per_datum"]
    title = f"vae on {metrics['data']}, guide {metrics['guide']}, p = {metrics['latent_dim']}"
    return {
        "params.pt": params_bytes(module_params(decoder=decoder, guide=guide)),
        "training_curve.png": curve_png(elbo_trace(result), title, lines=lines),
        "samples.png": vae_figures.samples_png(decoder, prepared.image_shape, seed=metrics["seed"]),
        "reconstructions.png": vae_figures.reconstructions_png(decoder, guide, shown, prepared.image_shape),
        "latent.png": vae_figures.latent_png(guide, shown, labels, f"latent means of {which} data"),
    }


def summary(metrics: dict) -> str:
    """Train and held-out log p(x) and ELBO, the gaps (and PPCA's exact answers), per datum."""

    def fmt(value):
        return "" if value is None else f"{value:12.6f}"

    rows = [
        ("initial parameters, train", "log p(x) IW", metrics["initial_log_likelihood_per_datum"]),
        (f"SVI, guide {metrics['guide']}, train", "log p(x) IW", metrics["log_likelihood_per_datum"]),
        (f"SVI, guide {metrics['guide']}, train", "ELBO", metrics["elbo_per_datum"]),
        ("held out", "log p(x) IW", metrics["heldout_log_likelihood_per_datum"]),
        ("held out", "ELBO", metrics["heldout_elbo_per_datum"]),
        ("held out subset", "approx. gap", metrics["approximation_gap_per_datum"]),
        ("held out subset", "amort. gap", metrics["amortisation_gap_per_datum"]),
    ]
    if "closed_form_log_likelihood_per_datum" in metrics:
        rows += [
            ("exact PPCA log p(x) at the fit, train", "log p(x)", metrics["exact_log_likelihood_per_datum"]),
            (
                "closed form (Tipping-Bishop), train",
                "log p(x)",
                metrics["closed_form_log_likelihood_per_datum"],
            ),
        ]
    lines = [
        f"vae on {metrics['data']} (train N={metrics['num_data']}, held out {metrics['num_heldout']}, "
        f"D={metrics['obs_dim']}), {metrics['device']}, {metrics['num_steps']} steps in "
        f"{metrics['svi_seconds']:.1f} s, K={metrics['eval_particles']}, nats per datum",
    ]
    lines += [f"{a:40s} {b:12s} {fmt(c)}" for a, b, c in rows if c is not None]
    if metrics["gap_rows"] is None and metrics["guide"] != "mean-field" and metrics["num_heldout"]:
        lines.append(
            "inference gaps: not computed (--gap-rows 0, or no row fits in --eval-budget); --gap-rows 200 "
            "computes them"
        )
    return "\n".join(lines)


__all__ = ["VAE_GUIDES", "build_decoder", "build_guide", "evaluate", "files", "prepare", "setup", "summary"]
