"""``python -m gallery compare``: every model with every guide that fits it, one row each.

For each row the fit is the one ``python -m gallery run MODEL --guide GUIDE`` makes (EM and SVI
from the same start, :func:`gallery.app.pipeline.fit`, the one pipeline of every model), and
the row splits log p(x) into the bound and its gap, per datum, at the SVI fit:

    log p(x) = ELBO(q) + KL(q || p(z | x))

For the mixture, factor analysis and PPCA every term is computed on its own in closed form by
:func:`inference.evaluate.decompose`, so gap and KL agree to rounding and the exact guides' gap
is 0. For the VAE, p(z | x) has no closed form: log p(x) is the importance-weighted estimate
(Burda et al. 2016) and the ELBO the same samples' average, so the gap there is an estimate
(low in expectation) and the KL column is empty.

Pyro's AutoDelta is left out: a point mass on a continuous z has entropy -inf, so its ELBO is
-inf and its KL to p(z | x) is +inf; the number Pyro optimises, log p(x, z*), is not a bound on
log p(x). For the mixture c is summed out in the model and AutoDelta would have nothing to place.

References:
1. Y. Burda, R. Grosse, R. Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gallery.app.config import make_config
from gallery.app.parsing import OneLineParser
from gallery.app.pipeline import fit, prepare
from gallery.app.threads import add_threads_argument, check_threads, using_threads
from gallery.app.vae_job import VAE_GUIDES
from gallery.models import EM_MODELS
from gallery.report.atomic import check_writable_folder, write_all_atomic
from gallery.report.outputs import png_bytes, pyplot
from guides.registry import GUIDES, check_guide
from inference.evaluate import decompose

PROG = "python -m gallery compare"
COLUMNS = (
    "model", "guide", "data", "num_data", "elbo_per_datum", "log_likelihood_per_datum",
    "gap_per_datum", "kl_per_datum", "log_likelihood_kind", "em_log_likelihood_per_datum",
    "steps", "svi_seconds", "seconds",
)  # fmt: skip
BOUND_TOL = 1e-9  # nats per datum: float64 rounding in the closed-form terms (measured ~1e-14)
NOTES = (
    "Nats per datum, at the SVI fit. log p(x) = ELBO + gap. For gmm, factor-analysis and ppca every "
    "term is exact (inference.evaluate.decompose) and gap = KL(q || p(z|x)) to rounding.",
    "vae: log p(x) is the importance-weighted estimate with K samples and the ELBO is the same "
    "samples' average, so the gap is an estimate, low in expectation; p(z|x) has no closed form, "
    "so there is no KL column.",
    "AutoDelta is left out: a point mass on continuous z has ELBO -inf and KL +inf, and the "
    "log p(x, z*) it maximises is not a bound on log p(x); for gmm, c is summed out in the model "
    "and AutoDelta would have no latent to place.",
)


@dataclass(frozen=True)
class Settings:
    """The costly settings; ``--quick`` swaps in tiny ones."""

    num_steps: int = 2000  # SVI steps for every fit, as `run`
    em_iters: int = 500  # EM's cap, as `run`
    vae_particles: int = 1000  # K of the VAE's importance-weighted log p(x), as `run vae`


QUICK = Settings(num_steps=200, em_iters=50, vae_particles=20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = Settings()
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny settings ({QUICK.num_steps} SVI steps, {QUICK.em_iters} EM iterations, "
        f"K = {QUICK.vae_particles}) for a smoke test; the numbers are not converged",
    )
    parser.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help=f"SVI steps for every fit; None: {default.num_steps}, or {QUICK.num_steps} with --quick",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="for initial parameters, networks, minibatches")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Fit every model with every guide that fits it (iris; the VAE on digits) and "
        "split log p(x) into ELBO + gap per datum; write DIR/compare.csv, DIR/compare.md and "
        "DIR/bound_decomposition.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return parser


def chosen_settings(args: argparse.Namespace) -> Settings:
    """``--quick`` or the defaults, with ``--num-steps`` where given."""
    chosen = QUICK if args.quick else Settings()
    return chosen if args.num_steps is None else replace(chosen, num_steps=args.num_steps)


def plan(args: argparse.Namespace) -> list:
    """Every (model, guide) fit, prepared and checked before anything is computed."""
    settings = chosen_settings(args)
    common = dict(num_steps=settings.num_steps, device=args.device, seed=args.seed, progress=False)
    fits = []
    for model in EM_MODELS:
        if getattr(EM_MODELS[model], "LATENTS", None) == ("c", "z"):
            continue  # mfa, mppca: not (yet) rows here; their bounds are checked in tests/test_mfa.py
        for guide in GUIDES:
            try:
                check_guide(model, guide)
            except ValueError:
                continue  # amortised-full is for continuous z only
            if guide == "amortised-flow":
                continue  # its q is not Gaussian: no closed-form decomposition (tests/guides/test_flow.py)
            # eval_particles=1: run's Monte Carlo ELBO is not used here; decompose gives it exactly
            config = make_config(model, guide=guide, em_iters=settings.em_iters, eval_particles=1, **common)
            fits.append(prepare(config))
    for guide in VAE_GUIDES:
        if guide == "amortised-flow":
            continue  # not (yet) a row of the table: its gaps are run vae's (README, BENCHMARKS.md)
        # every digit is fitted and evaluated, as every iris row is; no held-out split, no gaps
        config = make_config(
            "vae",
            guide=guide,
            data="digits",
            eval_particles=settings.vae_particles,
            heldout_fraction=0.0,
            gap_rows=0,
            **common,
        )
        fits.append(prepare(config))
    return fits


class BoundViolation(RuntimeError):
    """ELBO above log p(x), or a non-finite result: a bug, not a result."""


def em_model_row(prepared) -> dict:
    """Fit by EM and SVI (`run`'s fit), then decompose log p(x) at the SVI fit in closed form."""
    start = time.perf_counter()
    config, data, kwargs = prepared.config, prepared.data, prepared.model_kwargs
    result = fit(prepared)
    terms = decompose(result.guide, data, result.fitted.svi_params, init=result.fitted.init, **kwargs)
    label = f"{config.model} / {config.guide}"
    if not bool(torch.isfinite(terms.elbo).all() & torch.isfinite(terms.log_likelihood).all()):
        raise BoundViolation(f"{label}: non-finite ELBO or log p(x) at the SVI fit")
    excess = float((terms.elbo - terms.log_likelihood).max())
    if excess > BOUND_TOL:
        raise BoundViolation(f"{label}: ELBO exceeds log p(x) by {excess:.3g} nats for some datum")
    metrics = result.metrics
    return {
        "model": config.model,
        "guide": config.guide,
        "data": config.data.name,
        "num_data": metrics["num_data"],
        "elbo_per_datum": float(terms.elbo.mean()),
        "log_likelihood_per_datum": float(terms.log_likelihood.mean()),
        "gap_per_datum": float(terms.gap.mean()),
        "kl_per_datum": float(terms.kl.mean()),
        "log_likelihood_kind": "exact",
        "em_log_likelihood_per_datum": metrics["em_log_likelihood_per_datum"],
        "steps": config.train.num_steps,
        "svi_seconds": metrics["svi_seconds"],
        "seconds": time.perf_counter() - start,
    }


def vae_row(prepared) -> dict:
    """Fit the VAE (`run vae`'s fit); log p(x) and ELBO are estimates from the same K samples."""
    start = time.perf_counter()
    metrics = fit(prepared).metrics  # no checkpoints: nothing written while fitting
    elbo, log_likelihood = metrics["elbo_per_datum"], metrics["log_likelihood_per_datum"]
    label = f"vae / {prepared.config.guide}"
    if not (math.isfinite(elbo) and math.isfinite(log_likelihood)):
        raise BoundViolation(f"{label}: non-finite ELBO or log p(x) estimate")
    if elbo > log_likelihood:  # Jensen: log mean exp w >= mean w for the same samples, exactly
        raise BoundViolation(
            f"{label}: ELBO {elbo} exceeds the importance-weighted log p(x) {log_likelihood}"
        )
    return {
        "model": "vae",
        "guide": prepared.config.guide,
        "data": prepared.config.data.name,
        "num_data": metrics["num_data"],
        "elbo_per_datum": elbo,
        "log_likelihood_per_datum": log_likelihood,
        "gap_per_datum": log_likelihood - elbo,
        "kl_per_datum": None,
        "log_likelihood_kind": f"importance-weighted K={metrics['eval_particles']}",
        "em_log_likelihood_per_datum": None,
        "steps": metrics["num_steps"],
        "svi_seconds": metrics["svi_seconds"],
        "seconds": time.perf_counter() - start,
    }


def _cell(value, digits: int = 6) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0 turns -0.0 into 0.0
    return str(value)


DISPLAY = ("model", "guide", "ELBO", "log p(x)", "gap", "KL", "EM log p(x)", "log p(x) kind", "steps",
           "SVI s", "s")  # fmt: skip


def _display(row: dict) -> list[str]:
    """The cells of one row as the terminal and the markdown show them (``DISPLAY``)."""
    numbers = ("elbo_per_datum", "log_likelihood_per_datum", "gap_per_datum", "kl_per_datum")
    return [
        row["model"],
        row["guide"],
        *(_cell(row[key]) for key in numbers),
        _cell(row["em_log_likelihood_per_datum"]),
        row["log_likelihood_kind"],
        str(row["steps"]),
        _cell(row["svi_seconds"], 1),
        _cell(row["seconds"], 1),
    ]


def table_text(rows: list[dict]) -> str:
    lines = [list(DISPLAY), *map(_display, rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(DISPLAY))]
    text = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    return "\n".join(["nats per datum, at the SVI fit; log p(x) = ELBO + gap", *text])


def csv_bytes(rows: list[dict]) -> bytes:
    """Every column at full precision (repr of the float); empty where a value does not exist."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if row[key] is None else row[key] for key in COLUMNS} for row in rows)
    return buffer.getvalue().encode()


def markdown_bytes(rows: list[dict], args: argparse.Namespace) -> bytes:
    """The table under the command that made it, with what each row's fit is and the notes."""
    head = [name.replace("KL", "KL(q \\|\\| p(z\\|x))") for name in DISPLAY]
    settings, seed = chosen_settings(args), args.seed
    steps = settings.num_steps
    lines = ["# The bound decomposition, every model and guide", "", f"`{command_line(args)}`", ""]
    lines += [
        f"Each row is the fit of `python -m gallery run MODEL --guide GUIDE --num-steps {steps} "
        f"--em-iters {settings.em_iters} --seed {seed}` (iris, float64), or of `python -m gallery run vae "
        f"--guide GUIDE --num-steps {steps} --eval-particles {settings.vae_particles} --heldout-fraction 0 "
        f"--seed {seed}` (digits scaled to [0, 1], float32); every other setting at its default.",
        "",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_display(row)) + " |" for row in rows]
    lines += ["", *(f"- {note}" for note in NOTES), ""]
    return "\n".join(lines).encode()


def figure_png(rows: list[dict]) -> bytes:
    """One panel per model, one stacked bar per guide: the ELBO, then the gap on top of it up to
    log p(x), with EM's log p(x) as a dashed line. The axis is cut below the lowest ELBO, so a
    bar's height means nothing; its top segment, the gap, is the point."""
    plt = pyplot()
    models = list(dict.fromkeys(row["model"] for row in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 4.4), constrained_layout=True)
    for ax, model in zip(axes, models, strict=True):
        mine = [row for row in rows if row["model"] == model]
        x = range(len(mine))
        elbo = [row["elbo_per_datum"] for row in mine]
        gap = [row["gap_per_datum"] for row in mine]
        em = mine[0]["em_log_likelihood_per_datum"]
        exact = mine[0]["kl_per_datum"] is not None
        top = max([e + g for e, g in zip(elbo, gap, strict=True)] + ([em] if em is not None else []))
        span = max(top - min(elbo), 1e-3)
        base = min(elbo) - 0.15 * span
        ax.bar(x, [e - base for e in elbo], bottom=base, color="C0", label="ELBO")
        ax.bar(
            x,
            gap,
            bottom=elbo,
            color="C3",
            hatch=None if exact else "//",
            label="gap = KL(q || p(z|x)), exact" if exact else "gap, importance-weighted estimate",
        )
        for i, (e, g) in enumerate(zip(elbo, gap, strict=True)):
            text = "0" if abs(g) < 1e-9 else f"{g:.3g}"
            ax.text(i, e + g + 0.01 * span, text, ha="center", va="bottom", fontsize=7)
        if em is not None:
            ax.axhline(em, color="C1", ls="--", label="EM log p(x)")
        ax.set_ylim(base, top + 0.12 * span)
        ax.set_xticks(list(x), [row["guide"] for row in mine], rotation=30, ha="right")
        ax.set_title(f"{model} ({mine[0]['data']})\nlog p(x) {mine[0]['log_likelihood_kind']}", fontsize=9)
    axes[0].set_ylabel("nats per datum")
    handles = {}
    for ax in axes:
        handles |= dict(zip(*ax.get_legend_handles_labels()[::-1], strict=True))
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle("log p(x) = ELBO + gap at the SVI fit, per guide", fontsize=10)
    return png_bytes(fig)


def command_line(args: argparse.Namespace) -> str:
    parts = [PROG, *(["--quick"] if args.quick else [])]
    if args.num_steps is not None:
        parts += ["--num-steps", str(args.num_steps)]
    return " ".join([*parts, "--device", args.device, "--seed", str(args.seed), "--out", str(args.out)])


def run(args: argparse.Namespace) -> int:
    """Check everything, fit every row, check the bounds, and only then write the three files."""
    try:
        check_writable_folder(args.out)
        check_threads(args.threads)
        fits = plan(args)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    rows, notes = [], set()
    hide = True if args.no_progress else None  # None: tqdm shows the bar on a terminal only
    bar = tqdm(fits, desc="compare", unit="fit", disable=hide)
    try:
        with using_threads(args.threads):
            for prepared in bar:
                model = prepared.config.model
                bar.set_postfix_str(f"{model} / {prepared.config.guide}")
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    rows.append(vae_row(prepared) if prepared.config.is_vae else em_model_row(prepared))
                notes |= {f"{model}: {warning.message}" for warning in caught}
    except BoundViolation as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    payloads = {
        "compare.csv": csv_bytes(rows),
        "compare.md": markdown_bytes(rows, args),
        "bound_decomposition.png": figure_png(rows),
    }
    write_all_atomic(args.out, payloads)  # all staged to temporary files, then renamed
    print(table_text(rows))
    for note in NOTES[1:]:
        print(f"note: {note}")
    for note in sorted(notes):
        print(f"note: {note}")
    print(f"wrote {', '.join(str(args.out / name) for name in payloads)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error, already printed (2)
        return int(stop.code or 0)
    return run(args)


__all__ = ["add_arguments", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
