"""``python -m gallery figures``: the lecture's figures, redrawn from models fitted in this run.

The lecture's figures (listed in :mod:`gallery.report.figures.lecture`) and the fitted models' own
(:mod:`gallery.report.figures.models`), on the bundled data (iris, digits), each a PNG with a caption in
``DIR/index.md`` whose numbers come from the fits made here.

Bad input ends with one line on stderr and exit status 2 before any computation; the files are
written (staged, then renamed) only after every figure was made, and only into ``--out``. The
figures themselves are drawn by :mod:`gallery.report.figures.lecture`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from gallery.app.checks import check_device
from gallery.app.parsing import OneLineParser
from gallery.app.threads import add_threads_argument, check_threads, using_threads
from gallery.data import datasets
from gallery.report.atomic import check_writable_folder, write_all_atomic
from gallery.report.figures import FILES, LATENT_DIM, Figure, Settings

PROG = "python -m gallery figures"


def make_figures(settings: Settings, progress: bool = True) -> list[Figure]:
    """Fit everything and draw every figure, in memory; nothing is written. The drawing modules
    (and matplotlib) are imported here, not before."""
    from gallery.report.figures import lecture, models
    from gallery.report.outputs import pyplot

    iris = datasets.load("iris")
    hide = None if progress else True  # None: tqdm shows the bar on a terminal only
    with pyplot().rc_context({"font.size": 9}), tqdm(total=7, desc="figures", disable=hide) as bar:

        def step(label: str, draw, *args):
            bar.set_postfix_str(label)
            made = draw(*args)
            bar.update()
            return made

        kl = step("KL", lecture.kl_figure, settings)
        em_svi, ppca_fit = step("EM vs SVI", lecture.em_vs_svi_figure, settings, iris)
        mixture = step("mixture", models.gmm_figure, settings, iris)
        linear = step("FA and PPCA", models.linear_gaussian_figure, settings, iris)
        vae = step("VAE", lambda: models.vae_figure_files(settings, *fit_vae(settings)))
        decomposition = step("decomposition", lecture.decomposition_figure, settings, ppca_fit)
        vem = step("variational EM", lecture.vem_figure, settings, iris)
    return [kl, em_svi, mixture, linear, *vae, decomposition, vem]


def fit_vae(settings: Settings):
    """The VAE of the figures (p = 2, otherwise the ``run vae`` defaults) on the digits, fitted
    by the run pipeline; returns its result and prepared data."""
    from gallery.app.config import make_config
    from gallery.app.pipeline import fit, prepare

    config = make_config(
        "vae",
        guide="amortised",
        data="digits",
        latent_dim=LATENT_DIM,
        num_steps=settings.num_steps,
        eval_particles=settings.vae_eval_particles,
        gap_rows=0,
        device=str(settings.device),
        seed=settings.seed,
        progress=False,
    )
    prepared = prepare(config)
    return fit(prepared, settings.out), prepared  # writes nothing there: no checkpoint is asked for


def index_markdown(figures: list[Figure], settings: Settings, seconds: float) -> bytes:
    """``index.md``: one section per figure with its file, caption and command."""
    lines = [
        "# Figures",
        "",
        f"Redrawn from models fitted by `{settings.command}` ({settings.device}, seed {settings.seed}, "
        f"{settings.num_steps} SVI steps per fit, at most {settings.em_iters} EM iterations) "
        f"in {seconds:.0f} s. "
        "All numbers are nats per datum unless a unit is given.",
    ]
    for figure in figures:
        lines += [
            "",
            f"## {figure.title}",
            "",
            f"![{figure.title}]({figure.file})",
            "",
            f"- file: `{figure.file}`",
            f"- caption: {figure.caption}",
            f"- command: `{settings.command}`",
        ]
    return ("\n".join(lines) + "\n").encode()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings: 200 SVI steps, 100 EM iterations, K = 10 for the VAE's log p(x)",
    )
    parser.add_argument(
        "--num-steps", type=int, default=None, help="SVI steps of every fit; None: 2000, or 200 with --quick"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="for initial parameters, networks and samples")
    parser.add_argument("--out", type=Path, default=Path("runs/figures"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Check every flag; raises ``ValueError`` with what to change."""
    device = check_device(args.device)
    num_steps = args.num_steps if args.num_steps is not None else (200 if args.quick else 2000)
    if num_steps < 1:
        raise ValueError(f"--num-steps must be at least 1, got {num_steps}")
    if args.seed < 0:
        raise ValueError(f"--seed must be at least 0, got {args.seed}")
    check_writable_folder(Path(args.out))
    check_threads(args.threads)
    command = [PROG, *(["--quick"] if args.quick else [])]
    command += [] if args.num_steps is None else ["--num-steps", str(args.num_steps)]
    command += [] if device.type == "cpu" else ["--device", args.device]
    command += [] if args.seed == 0 else ["--seed", str(args.seed)]
    command += ["--out", shlex.quote(str(args.out))]
    return Settings(
        num_steps=num_steps,
        em_iters=100 if args.quick else 2000,
        vae_eval_particles=10 if args.quick else 1000,
        kl_samples=200,
        device=device,
        seed=args.seed,
        out=Path(args.out),
        command=" ".join(command),
    )


def run(args: argparse.Namespace) -> int:
    """Check the flags, make every figure, then write them and ``index.md`` into ``--out``."""
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with using_threads(args.threads):
        figures = make_figures(settings, progress=not args.no_progress)
    payloads = {figure.file: figure.png for figure in figures}
    payloads["index.md"] = index_markdown(figures, settings, time.perf_counter() - start)
    write_all_atomic(settings.out, payloads)
    print(f"wrote {len(payloads)} files to {settings.out}: {', '.join(payloads)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog=PROG,
        description="Redraw the lecture's figures from models fitted in this run, one PNG each, "
        "with captions in DIR/index.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["FILES", "add_arguments", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
