"""``python -m gallery models``: one row per model, scored on rows it was not fitted to.

Every model is fitted on the same 80% of the rows (a seeded permutation, the VAE's own split)
and scored on the other 20% by log p(x) per datum: exact for the Gaussian mixtures (diagonal
and full covariance), factor analysis, PPCA and the mixtures of factor analysers and of PPCA,
each fitted by exact EM (the maximum-likelihood fit); importance-weighted (Burda et al. 2016,
K = ``--particles`` samples, a lower bound in expectation) for the VAE, fitted by ``run vae``'s
defaults. Columns: the number of free parameters k, train and held-out log p(x) per datum,
BIC = k ln N_train - 2 sum_n log p(x_n) on the training rows, and seconds.

Constant columns are dropped first (as ``--drop-constant-columns``): a variance there would
shrink to 0 and the likelihood has no maximum. The VAE reads the same columns scaled to [0, 1]
(its default for images); its log p(x) is moved back to the raw scale by the Jacobian,
-D log(scale). Every EM model adds ``--reg-covar`` (default 0.01, a tenth of a grey level's
standard deviation) to its noise variances: with the mixtures' 1e-6 a pixel that is nearly
constant in the training rows gets a variance near 1e-6 and one held-out row with ink there
costs thousands of nats (measured: the diagonal GMM's held-out log p(x) -1537 against -134 on
the training rows, factor analysis -1.4e9). Factor analysis and PPCA are fitted as the
mixtures with K = 1 (the same EM, ``tests/test_mfa.py``), which take the floor.
Writes DIR/models.md, DIR/models.csv and DIR/models.png atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from gallery.data import datasets
from gallery.models import MODELS
from gallery.report.atomic import check_writable_folder, write_all_atomic
from inference.em import fit_em


@dataclass(frozen=True)
class Settings:
    gmm_components: tuple[int, ...] = (1, 5, 10, 20)
    latent_dims: tuple[int, ...] = (5, 10, 20)  # factor analysis and PPCA
    mixtures: tuple[tuple[int, int], ...] = ((5, 5), (10, 5), (10, 10))  # (K, p) of MFA and MPPCA
    em_iters: int = 500
    reg_covar: float = 1e-2  # added to every variance: digits are integers 0..16, see the module doc
    vae_steps: int | None = None  # None: run's default
    particles: int = 1000


QUICK = Settings((1, 2), (2,), ((2, 2),), em_iters=5, vae_steps=10, particles=5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", help="bundled name or a .npy/.npz/.csv path")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (not converged)")
    parser.add_argument(
        "--particles", type=int, default=None, help="importance samples of the VAE's log p(x); None: 1000"
    )
    parser.add_argument(
        "--reg-covar", type=float, default=None, help="added to every variance of the EM models; None: 0.01"
    )
    parser.add_argument("--heldout-fraction", type=float, default=0.2, help="rows scored, not fitted")
    parser.add_argument("--seed", type=int, default=0, help="the split, the starts, the VAE")
    parser.add_argument("--out", type=Path, default=Path("runs/models"), help="output folder")


def num_params(name: str, obs_dim: int, components: int = 1, latent_dim: int = 0) -> int:
    """Free parameters: a loading counts D p - p (p - 1) / 2 (its rotation is not identified)."""
    linear = obs_dim + obs_dim * latent_dim - latent_dim * (latent_dim - 1) // 2
    per = {
        "gmm-diag": 2 * obs_dim,
        "gmm-full": obs_dim + obs_dim * (obs_dim + 1) // 2,
        "factor-analysis": linear + obs_dim,
        "ppca": linear + 1,
        "mfa": linear + obs_dim,
        "mppca": linear + 1,
    }[name]
    return components - 1 + components * per


def plan(settings: Settings) -> list[tuple[str, str, int, int, dict]]:
    """(label, module name, K, p, init options) of every EM row."""
    rows = []
    for kind in ("diag", "full"):
        rows += [(f"gmm-{kind}", "gmm", k, 0, {"covariance_type": kind}) for k in settings.gmm_components]
    rows += [(name, name, 1, p, {}) for name in ("factor-analysis", "ppca") for p in settings.latent_dims]
    rows += [(name, name, k, p, {}) for name in ("mfa", "mppca") for k, p in settings.mixtures]
    return rows


def em_row(label, name, components, latent_dim, options, train, heldout, settings, seed) -> dict:
    start = time.perf_counter()
    name = {"factor-analysis": "mfa", "ppca": "mppca"}.get(name, name)  # K = 1: takes reg_covar
    module = MODELS[name]
    sizes = (components,) if name == "gmm" else (components, latent_dim)
    row = {"model": label, "K": components, "p": latent_dim if name != "gmm" else ""}
    row["params"] = num_params(label, train.shape[1], components, latent_dim)
    try:
        init = module.init_params(train, *sizes, generator=torch.Generator().manual_seed(seed), **options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit_em(train, init, max_iters=settings.em_iters, tol=1e-8, reg_covar=settings.reg_covar)
        train_ll = float(module.log_likelihood(train, result.params).mean())
        heldout_ll = float(module.log_likelihood(heldout, result.params).mean())
        note = f"EM {result.num_iters} it" + ("" if result.converged and not caught else " (not converged)")
    except ValueError as err:
        train_ll = heldout_ll = math.nan
        note = f"failed: {err}"
    return row | scores(train_ll, heldout_ll, row["params"], len(train), start, note)


def scores(train_ll, heldout_ll, params, num_train, start, note) -> dict:
    bic = params * math.log(num_train) - 2 * num_train * train_ll
    return {
        "train_log_likelihood_per_datum": train_ll,
        "heldout_log_likelihood_per_datum": heldout_ll,
        "bic": bic,
        "seconds": time.perf_counter() - start,
        "notes": note,
    }


def vae_row(data: torch.Tensor, scale: float, settings: Settings, args) -> dict:
    """``run vae`` with its defaults on ``data / scale`` (all rows, in the order of the split),
    held out by its own seeded split, which is the table's."""
    from gallery.app.config import make_config
    from gallery.app.pipeline import fit, prepare

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.npy"
        np.save(path, (data / scale).numpy())
        config = make_config(
            "vae",
            data=str(path),
            heldout_fraction=args.heldout_fraction,
            eval_particles=settings.particles,
            gap_rows=0,
            seed=args.seed,
            num_steps=settings.vae_steps,
            progress=False,
        )
        result = fit(prepare(config))
    metrics = result.metrics
    store = pyro.get_param_store()
    params = sum(store[key].numel() for key in store.keys() if key.startswith("vae.") and "guide" not in key)
    shift = -data.shape[1] * math.log(scale)  # log p(x) = log p(x / scale) - D log scale
    note = f"IW K={settings.particles}; {metrics['num_steps']} SVI steps; params: decoder and noise"
    row = {"model": "vae", "K": "", "p": metrics["latent_dim"], "params": params}
    return row | scores(
        metrics["log_likelihood_per_datum"] + shift,
        metrics["heldout_log_likelihood_per_datum"] + shift,
        params,
        metrics["num_data"],
        start,
        note,
    )


COLUMNS = [
    "model", "K", "p", "params", "train_log_likelihood_per_datum", "heldout_log_likelihood_per_datum",
    "bic", "seconds", "notes",
]  # fmt: skip


def csv_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def markdown_bytes(rows: list[dict], header: str) -> bytes:
    lines = [header, "", "| model | K | p | params | train log p(x) | held-out log p(x) | BIC | s | notes |"]
    lines.append("|" + "---|" * 9)
    for r in rows:
        train, heldout = r["train_log_likelihood_per_datum"], r["heldout_log_likelihood_per_datum"]
        lines.append(
            f"| {r['model']} | {r['K']} | {r['p']} | {r['params']} | {train:.3f} | {heldout:.3f} "
            f"| {r['bic']:.0f} | {r['seconds']:.1f} | {r['notes']} |"
        )
    return ("\n".join(lines) + "\n").encode()


def png(rows: list[dict], title: str) -> bytes:
    from gallery.report.outputs import png_bytes, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    families = sorted({r["model"] for r in rows})
    for i, family in enumerate(families):
        mine = [
            r for r in rows if r["model"] == family and math.isfinite(r["heldout_log_likelihood_per_datum"])
        ]
        ax.plot(
            [r["params"] for r in mine],
            [r["heldout_log_likelihood_per_datum"] for r in mine],
            "o",
            color=f"C{i % 10}",
            label=family,
        )
    ax.set(xscale="log", xlabel="number of parameters", ylabel="held-out log p(x) per datum", title=title)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def run(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else Settings()
    if args.particles is not None:
        settings = Settings(**{**settings.__dict__, "particles": args.particles})
    if args.reg_covar is not None:
        settings = Settings(**{**settings.__dict__, "reg_covar": args.reg_covar})
    try:
        check_writable_folder(args.out)
        if not 0 < args.heldout_fraction < 1 or settings.particles < 1:
            raise ValueError("--heldout-fraction must be in (0, 1) and --particles at least 1")
        data = datasets.load(args.data).data.double()
        constant = (data == data[0]).all(0)
        data = data[:, ~constant]
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
        num_heldout = round(args.heldout_fraction * len(data))
        train, heldout = data[perm[num_heldout:]], data[perm[:num_heldout]]
        rows = [em_row(*spec, train, heldout, settings, args.seed) for spec in plan(settings)]
        scale = 16.0 if args.data == "digits" else 1.0
        rows.append(vae_row(data, scale, settings, args))
    except ValueError as err:
        print(f"python -m gallery models: error: {err}", file=sys.stderr)
        return 2
    header = (
        f"# Held-out log p(x) on {args.data}: {len(train)} rows fitted, {len(heldout)} scored "
        f"(seed {args.seed}), D = {data.shape[1]} after dropping {int(constant.sum())} constant columns; "
        f"nats per datum; EM with reg_covar {settings.reg_covar:g}; BIC on the training rows (lower is "
        "better)"
    )
    payloads = {
        "models.md": markdown_bytes(rows, header),
        "models.csv": csv_bytes(rows),
        "models.png": png(rows, f"{args.data}: held-out log p(x) against size"),
    }
    write_all_atomic(args.out, payloads)
    print(payloads["models.md"].decode())
    print(f"wrote {', '.join(str(args.out / name) for name in payloads)}")
    return 0


__all__ = ["QUICK", "Settings", "add_arguments", "num_params", "plan", "run"]
