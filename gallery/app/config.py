"""The ``run`` job's settings, split by who reads them: the data, SVI, EM and the VAE.

Every field holds its real default. The defaults that depend on the model or the guide (the
learning rate, the dtype, the evaluation particles, the VAE's hidden sizes and batch size, the
data set and the guide) are settled once, by :func:`make_config`, from :data:`BY_MODEL`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}
NETWORK_LR = 0.005  # a network's weights move every q at once: 10x smaller steps than tables
VAE_LR = 0.002  # the VAE's encoder and decoder: NETWORK_LR diverged on 784-400-z50 (README)
VAE_HIDDEN = (128,)  # the VAE's MLP decoder and encoder
CONV_LR = 0.001  # --architecture conv: at NETWORK_LR the conv VAE on the digits ignored z (BENCHMARKS.md)


@dataclass(frozen=True)
class DataConfig:
    """What to read and what to do to it first (each step is recorded in metrics.json)."""

    name: str = "iris"  # bundled (iris, digits, digits28), mnist (data_dir) or a .npy/.npz/.csv; vae: digits
    standardize: bool = False  # z-score each column
    drop_constant_columns: bool = False
    binarize: bool = False  # the VAE: threshold at 0.5
    data_dir: str | None = None  # MNIST in torchvision's layout
    stream: bool = False  # leave a .npy in its file and read minibatches from the memory map


@dataclass(frozen=True)
class TrainConfig:
    """SVI's settings and the evaluation after it (:func:`inference.svi.fit_svi`)."""

    num_steps: int = 2000
    batch_size: int | None = None  # None: every row every step; vae: 128 (per process)
    lr: float = 0.05  # Adam's initial rate, decayed 10x; amortised guides: NETWORK_LR, the vae's VAE_LR
    num_particles: int = 1  # ELBO samples per step
    eval_particles: int | None = 100  # samples of the final ELBO; vae: None, from --eval-budget
    device: str = "cpu"
    dtype: str = "float64"  # of the data and SVI; vae: float32
    seed: int = 0  # initial parameters, networks, minibatches
    progress: bool = True
    threads: int | None = None  # CPU threads for torch; None: torch's default
    checkpoint_every: int | None = None  # None: no checkpoints
    resume: bool = False
    num_processes: int = 1  # data-parallel SVI processes; batch_size is then per process
    arviz: bool = False  # posterior draws of the local latents and the ELBO trace
    arviz_draws: int = 100
    compile: str = "auto"  # SVI's step: off, graph, inductor; auto: graph from 1000 steps on CPU
    objective: str = "elbo"  # or iwae, iwae-dreg: the num_particles-sample bound (inference.iwae)


@dataclass(frozen=True)
class EMConfig:
    """The exact EM baseline of the mixture, factor analysis and PPCA (:func:`inference.fit_em`)."""

    max_iters: int = 500
    tol: float = 1e-8  # nats per datum
    restarts: int = 1  # EM starts (k-means++ and random rows, alternating); SVI from the best


@dataclass(frozen=True)
class VAEConfig:
    """The VAE's decoder and its held-out evaluation."""

    likelihood: str = "gaussian"
    decoder: str = "mlp"  # or linear: f(z) = Az + b (PPCA)
    architecture: str = "mlp"  # or conv: convolutional encoder and decoder for square images
    activation: str = "relu"
    noise_variance: float | None = None  # a fixed sigma^2; None: learned
    heldout_fraction: float = 0.1
    gap_rows: int | None = None  # held-out rows for the inference gaps; None: from eval_budget
    eval_budget: float = 0.15  # the evaluation's cost over SVI's when K or gap_rows is None (eval_plan)
    gap_steps: int = 1000  # SVI steps for the best local q
    eval_rows: int = 1000  # training rows (a fixed sample) for the importance-weighted estimates; 0: all


@dataclass(frozen=True)
class RunConfig:
    model: str
    guide: str = "exact"  # vae: amortised
    components: int = 3  # K of the mixture
    covariance_type: str = "full"
    latent_dim: int = 2  # p, the size of z
    hidden: tuple[int, ...] = ()  # amortised encoder (): affine; vae: VAE_HIDDEN, () for a linear decoder
    flow_layers: int = 2  # inverse autoregressive flow layers of the amortised-flow guide
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    em: EMConfig = field(default_factory=EMConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)

    @property
    def is_vae(self) -> bool:
        return self.model == "vae"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.train.dtype]


# flat setting name (the command line's, with _) -> (part, field); the rest are RunConfig's own
PARTS = {"data": DataConfig, "train": TrainConfig, "em": EMConfig, "vae": VAEConfig}
RENAMED = {("data", "name"): "data", ("em", "max_iters"): "em_iters", ("em", "tol"): "em_tol"}
WHERE = {
    RENAMED.get((part, f.name), f.name): (part, f.name) for part, cls in PARTS.items() for f in fields(cls)
}
OWN = ("model", "guide", "components", "covariance_type", "latent_dim", "hidden", "flow_layers")


def by_model(model: str, guide: str | None = None, decoder: str = "mlp") -> dict:
    """The defaults that depend on the model and guide, by flat setting name."""
    vae = model == "vae"
    guide = guide or ("amortised" if vae else "exact")
    return {
        "guide": guide,
        "data": "digits" if vae else "iris",
        "lr": (VAE_LR if vae else NETWORK_LR) if guide.startswith("amortised") else TrainConfig.lr,
        "dtype": "float32" if vae else TrainConfig.dtype,
        "eval_particles": None if vae else TrainConfig.eval_particles,
        "hidden": (() if decoder == "linear" else VAE_HIDDEN) if vae else (),
        "batch_size": 128 if vae else None,
    }


BY_MODEL_HELP = {
    "guide": "exact, or amortised for the vae",
    "data": "iris, or digits for the vae",
    "lr": f"{TrainConfig.lr}, or {NETWORK_LR} for amortised guides, {VAE_LR} for the vae's ({CONV_LR} with "
    "--architecture conv)",
    "dtype": "float64, vae float32",
    "eval_particles": "100; the vae's from --eval-budget, 10 to 1000",
    "hidden": f"(), or {','.join(map(str, VAE_HIDDEN))} for the vae",
    "batch_size": "all the data every step, or 128 for the vae",
}


def make_config(model: str, **settings) -> RunConfig:
    """The run's config from flat settings (``num_steps=...``, ``em_iters=...``); a setting that
    is absent or ``None`` takes its default, the model- and guide-dependent ones from
    :func:`by_model` (a VAE ``hidden`` of () too: a linear decoder has none)."""
    given = {key: value for key, value in settings.items() if value is not None}
    if unknown := set(given) - set(WHERE) - set(OWN):
        raise TypeError(f"unknown settings {sorted(unknown)}")
    defaults = by_model(model, given.get("guide"), given.get("decoder", VAEConfig.decoder))
    if model == "vae" and given.get("architecture") == "conv" and defaults["guide"].startswith("amortised"):
        defaults["lr"] = CONV_LR
    if model == "vae" and (not given.get("hidden") or given.get("decoder") == "linear"):
        given.pop("hidden", None)
    given = {**{k: v for k, v in defaults.items() if k != "batch_size" or v is not None}, **given}
    parts = {part: {} for part in PARTS}
    for key, value in given.items():
        if key in WHERE:
            part, name = WHERE[key]
            parts[part][name] = value
    own = {key: given[key] for key in OWN[1:] if key in given}
    return RunConfig(model, **own, **{part: PARTS[part](**values) for part, values in parts.items()})


def flat(config: RunConfig) -> dict:
    """Every setting by its flat name, in the config's order."""
    values = {key: getattr(config, key) for key in OWN}
    for key, (part, name) in WHERE.items():
        values.setdefault(key, getattr(getattr(config, part), name))
    return values


def with_settings(config: RunConfig, **settings) -> RunConfig:
    """``config`` with some flat settings replaced (no defaults are settled again)."""
    own = {key: settings.pop(key) for key in list(settings) if key in OWN}
    parts = {}
    for key, value in settings.items():
        part, name = WHERE[key]
        parts.setdefault(part, {})[name] = value
    return replace(config, **own, **{p: replace(getattr(config, p), **v) for p, v in parts.items()})


__all__ = [
    "BY_MODEL_HELP",
    "DTYPES",
    "DataConfig",
    "EMConfig",
    "RunConfig",
    "TrainConfig",
    "VAEConfig",
    "by_model",
    "flat",
    "make_config",
    "with_settings",
]
