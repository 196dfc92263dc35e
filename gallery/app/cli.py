"""Command line: ``python -m gallery run MODEL ...`` and ``python -m gallery list``.

Bad input ends with one line on stderr and exit status 2, before any computation, and leaves
an existing ``--out`` folder as it was.

``run MODEL --num-processes W`` checks the input, then starts ``torchrun`` with W processes of
``python -m gallery run MODEL`` (the same arguments without ``--num-processes``) and returns its
exit status; ``torchrun --nproc-per-node W -m gallery run MODEL ...`` is the same thing started
by hand (on several machines, with torchrun's own flags). Each process trains on its shard of the
data (:mod:`inference.distributed`); rank 0 prints and writes the results, the others exit 0
quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

from gallery.app import compare, figures, models_table
from gallery.app.config import BY_MODEL_HELP, DTYPES, OWN, WHERE, RunConfig, flat, make_config, with_settings
from gallery.app.parsing import OneLineParser, add_compile_argument
from gallery.app.pipeline import fit, prepare, render, summary
from gallery.app.threads import add_threads_argument
from gallery.data import datasets
from gallery.models import MODELS
from gallery.models.vae import ACTIVATIONS, LIKELIHOODS
from gallery.report.atomic import check_writable_folder, write_all_atomic
from gallery.report.lock import output_lock
from guides.registry import GUIDES
from inference.distributed import DataParallel
from inference.interrupt import Interrupted, stop_on_signals
from inference.iwae import OBJECTIVES

EM_MODELS = [name for name in MODELS if name != "vae"]
MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds NumPy's legacy generator, which takes 0..2**32 - 1


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes sizes like 64,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _rows(text: str) -> int:
    """``--eval-rows``: a number of rows, or ``all`` (0)."""
    if text.strip().lower() == "all":
        return 0
    try:
        rows = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eval-rows takes a number of rows or all, got {text!r}") from None
    if rows < 0:
        raise argparse.ArgumentTypeError(f"--eval-rows must be a number of rows or all, got {text!r}")
    return rows


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed takes a whole number, got {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"--seed must be between 0 and 2**32 - 1 (NumPy's range), got {seed}"
        )
    return seed


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m gallery", description="Latent-variable models on Pyro.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    commands.add_parser("list", help="print the models, guides and bundled data sets")
    compare_parser = commands.add_parser(
        "compare",
        help="every model with every guide that fits it, against the exact answer",
        description=compare.__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    compare.add_arguments(compare_parser)
    figures_parser = commands.add_parser(
        "figures",
        help="redraw the lecture's figures from models fitted in this run",
        description="Redraw the lecture's figures from models fitted in this run, one PNG each, "
        "with captions in DIR/index.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    figures.add_arguments(figures_parser)
    models_parser = commands.add_parser(
        "models",
        help="every model fitted on 80%% of the rows and scored on the rest, one row each",
        description=models_table.__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    models_table.add_arguments(models_parser)
    run = commands.add_parser(
        "run",
        help="fit one model by SVI and by exact EM from the same start",
        description="Fit MODEL by SVI with --guide and by exact EM from the same initial "
        "parameters; write DIR/metrics.json, DIR/params.pt and DIR/training_curve.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = SimpleNamespace(**flat(RunConfig(model="gmm")))  # the defaults that hold for every model
    for add in (_model_arguments, _training_arguments, _data_arguments, _vae_arguments, _output_arguments):
        add(run, defaults)
    return parser


def _model_arguments(run: argparse.ArgumentParser, defaults: SimpleNamespace) -> None:
    """MODEL, the guide, the data set and the model's sizes."""
    run.add_argument(
        "model", choices=[*EM_MODELS, "vae"], metavar="MODEL", help=", ".join([*EM_MODELS, "vae"])
    )
    run.add_argument(
        "--guide",
        default=None,
        choices=list(GUIDES),
        metavar="GUIDE",
        help=f"{', '.join(GUIDES)}; None: {BY_MODEL_HELP['guide']}",
    )
    run.add_argument(
        "--data",
        default=None,
        help="bundled name (iris, digits, digits28), mnist (with --data-dir), or a .npy/.npz/.csv path; "
        f"None: {BY_MODEL_HELP['data']}",
    )
    run.add_argument("--components", type=int, default=defaults.components, help="K, mixture components")
    run.add_argument(
        "--covariance-type",
        default=defaults.covariance_type,
        choices=["full", "diag"],
        help="mixture covariances",
    )
    run.add_argument("--latent-dim", type=int, default=defaults.latent_dim, help="p, size of z")


def _training_arguments(run: argparse.ArgumentParser, defaults: SimpleNamespace) -> None:
    """SVI's and EM's settings."""
    run.add_argument("--num-steps", type=int, default=defaults.num_steps, help="SVI steps")
    run.add_argument(
        "--batch-size", type=int, default=None, help=f"minibatch size; None: {BY_MODEL_HELP['batch_size']}"
    )
    run.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"Adam learning rate, decays 10x; None: {BY_MODEL_HELP['lr']}",
    )
    run.add_argument(
        "--num-particles",
        "--train-particles",
        dest="num_particles",
        type=int,
        default=defaults.num_particles,
        help="samples per data point per step: of the ELBO, or K of --objective iwae",
    )
    run.add_argument(
        "--objective",
        default=defaults.objective,
        choices=list(OBJECTIVES),
        help="the training objective: the ELBO, or the K-sample importance-weighted bound (Burda et al. "
        "2016) with the plain gradient (iwae) or the doubly reparameterised one (iwae-dreg, Tucker et "
        "al. 2019), K = --train-particles",
    )
    run.add_argument(
        "--eval-particles",
        type=int,
        default=None,
        help="samples for the final ELBO (and the VAE's importance-weighted log p(x)); "
        f"None: {BY_MODEL_HELP['eval_particles']}",
    )
    run.add_argument(
        "--hidden",
        type=_hidden,
        default=None,
        help="hidden sizes, e.g. 64,64, of the amortised encoder ((): affine), and of the VAE's "
        f"decoder and encoder; None: {BY_MODEL_HELP['hidden']}",
    )
    run.add_argument(
        "--flow-layers",
        type=int,
        default=defaults.flow_layers,
        help="inverse autoregressive flow layers of --guide amortised-flow",
    )
    run.add_argument("--em-iters", type=int, default=defaults.em_iters, help="maximum EM iterations")
    run.add_argument("--em-tol", type=float, default=defaults.em_tol, help="EM tolerance, nats per datum")
    run.add_argument(
        "--restarts",
        type=int,
        default=defaults.restarts,
        help="EM starts (mixtures: k-means++ and random rows, alternating; FA/PPCA: random loadings), "
        "the best by final log p(x) kept; SVI starts from the best start",
    )


def _data_arguments(run: argparse.ArgumentParser, defaults: SimpleNamespace) -> None:
    """What is done to the data, and where and how it is computed."""
    run.add_argument(
        "--stream",
        action="store_true",
        help="leave a .npy --data in its file (memory-mapped) and read each minibatch from it; needs "
        "--batch-size (not for the vae)",
    )
    run.add_argument("--standardize", action="store_true", help="z-score each column first (recorded)")
    run.add_argument(
        "--drop-constant-columns", action="store_true", help="drop columns with one value (recorded)"
    )
    run.add_argument("--device", default=defaults.device, help="cpu or cuda")
    add_threads_argument(run)
    run.add_argument(
        "--dtype",
        default=None,
        choices=list(DTYPES),
        help=f"for the data and SVI; None: {BY_MODEL_HELP['dtype']}",
    )


def _vae_arguments(run: argparse.ArgumentParser, defaults: SimpleNamespace) -> None:
    """The VAE's own flags, in their own group of --help."""
    vae = run.add_argument_group("the vae")
    vae.add_argument("--likelihood", default=defaults.likelihood, choices=list(LIKELIHOODS), help="p(x|z)")
    vae.add_argument(
        "--decoder", default=defaults.decoder, choices=["mlp", "linear"], help="linear: f(z) = Az + b (PPCA)"
    )
    vae.add_argument(
        "--architecture",
        default=defaults.architecture,
        choices=["mlp", "conv"],
        help="conv: convolutional encoder and decoder, for rows that are square images (8x8, 28x28)",
    )
    vae.add_argument(
        "--activation", default=defaults.activation, choices=list(ACTIVATIONS), help="of the MLPs"
    )
    vae.add_argument(
        "--noise-variance", type=float, default=None, help="a fixed Gaussian sigma^2; None: learned"
    )
    vae.add_argument("--binarize", action="store_true", help="threshold the data at 0.5 (recorded)")
    vae.add_argument(
        "--heldout-fraction", type=float, default=defaults.heldout_fraction, help="0: train on all rows"
    )
    vae.add_argument("--data-dir", default=None, help="a folder with MNIST in torchvision's layout")
    vae.add_argument(
        "--gap-rows",
        type=int,
        default=defaults.gap_rows,
        help="held-out rows for the inference gaps; 0: none; None: as many as --eval-budget leaves "
        "after the importance-weighted estimates, at most 200",
    )
    vae.add_argument(
        "--eval-budget",
        type=float,
        default=defaults.eval_budget,
        help="the evaluation's cost, at most this times SVI's (the networks' arithmetic, "
        "gallery/app/eval_plan.py), when --eval-particles or --gap-rows is not given",
    )
    vae.add_argument(
        "--gap-steps", type=int, default=defaults.gap_steps, help="SVI steps for the best local q"
    )
    vae.add_argument(
        "--eval-rows",
        type=_rows,
        default=defaults.eval_rows,
        help="training rows (a fixed sample) for the importance-weighted log p(x) and ELBO, at the start "
        "and after SVI; all (or 0): every row. Held-out rows are always all evaluated",
    )


def _output_arguments(run: argparse.ArgumentParser, defaults: SimpleNamespace) -> None:
    """The seed, the output folder, progress, checkpoints, ArviZ, compiling and processes."""
    run.add_argument(
        "--seed", type=_seed, default=defaults.seed, help="for initial parameters, networks, minibatches"
    )
    run.add_argument("--out", type=Path, default=None, help="output folder; None: runs/MODEL")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="SVI steps; writes DIR/checkpoint.pt (and at the end)",
    )
    run.add_argument("--resume", action="store_true", help="continue the SVI run from DIR/checkpoint.pt")
    run.add_argument(
        "--resume-if-present",
        action="store_true",
        help="for requeued jobs: --resume if DIR/checkpoint.pt exists, else start; needs --checkpoint-every",
    )
    run.add_argument(
        "--arviz",
        action="store_true",
        help="also write DIR/posterior.nc (ArviZ: draws of the local latents, the ELBO trace) and "
        "DIR/posterior_summary.csv",
    )
    run.add_argument(
        "--arviz-draws", type=int, default=defaults.arviz_draws, help="posterior draws for --arviz"
    )
    add_compile_argument(run)
    run.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help="data-parallel SVI processes on this machine, started by torchrun (--batch-size is per "
        "process); None: 1, or torchrun's WORLD_SIZE",
    )


def _list() -> None:
    print("models:")
    for name in EM_MODELS:
        print(f"  {name:16s} {MODELS[name].__doc__.strip().splitlines()[0]}")
    print(f"  {'vae':16s} the variational autoencoder: z ~ N(0, I), x | z ~ N(f(z), sigma^2 I) or Bernoulli")
    print("guides:")
    for name, text in GUIDES.items():
        print(f"  {name:16s} {text}")
    print("bundled data sets:")
    for name, text in datasets.BUNDLED.items():
        print(f"  {name:16s} {text}")
    print(f"  {'mnist':16s} MNIST's 60,000 training images, read from --data-dir (never downloaded)")
    print("  or a path to a .npy, .npz or .csv file with one observation per row")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    if args.command == "compare":
        return compare.run(args)
    if args.command == "figures":
        return figures.run(args)
    if args.command == "models":
        return models_table.run(args)
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # > 1: this is one of torchrun's processes
    num_processes = args.num_processes if args.num_processes is not None else launched
    if launched > 1 and num_processes != launched:
        print(
            f"python -m gallery run: error: --num-processes {num_processes} but torchrun started {launched} "
            "processes; drop --num-processes under torchrun",
            file=sys.stderr,
        )
        return 2
    config = config_from_args(args, num_processes)
    out = args.out if args.out is not None else Path("runs") / args.model
    if args.resume_if_present:
        if args.checkpoint_every is None:
            print(
                "python -m gallery run: error: --resume-if-present needs --checkpoint-every N",
                file=sys.stderr,
            )
            return 2
        config = with_settings(config, resume=args.resume or (out / "checkpoint.pt").is_file())
    if num_processes > 1 and launched == 1:
        try:  # refuse bad input here, once, before any process starts
            check_writable_folder(out)
            prepare(config)
        except ValueError as err:
            print(f"python -m gallery run: error: {err}", file=sys.stderr)
            return 2
        return launch(without_num_processes(sys.argv[1:] if argv is None else argv), num_processes)
    if launched > 1:  # torchrun's processes stop together on torchrun's terms
        return run_here(config, out, DataParallel.from_environment(config.train.device))
    with stop_on_signals():  # SIGINT, SIGTERM: stop at the next SVI step, checkpoint, exit 130, 143
        try:
            return run_here(config, out, None)
        except Interrupted as stop:
            print(f"python -m gallery run: {interrupted_line(stop, out)}", file=sys.stderr)
            return stop.exit_status


def run_here(config: RunConfig, out: Path, parallel: DataParallel | None) -> int:
    """``run`` in this process (one of ``parallel``'s ranks, or alone): check, fit and, on rank 0,
    write the results into ``out``, which no other command may write into meanwhile
    (:func:`gallery.report.lock.output_lock`, held by the writing rank)."""
    with contextlib.ExitStack() as held:
        try:
            check_writable_folder(out)
            prepared = prepare(config)
            if config.train.resume and not (out / "checkpoint.pt").is_file():  # before the lock makes out
                raise ValueError(
                    f"no checkpoint at {str(out / 'checkpoint.pt')!r}; start the run without --resume "
                    "(--resume-if-present starts when there is none)"
                )
            if parallel is None or parallel.is_root:
                held.enter_context(output_lock(out))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = fit(prepared, out, parallel=parallel)
                if result is not None:
                    payloads, text = render(result), summary(result)
        except ValueError as err:
            rank = "" if parallel is None else f" (rank {parallel.rank} of {parallel.world_size})"
            print(f"python -m gallery run{rank}: error: {one_line(err)}", file=sys.stderr)
            return 2
        finally:
            if parallel is not None:
                parallel.close()
        if result is None:  # a rank other than 0: rank 0 reports
            return 0
        write_all_atomic(out, payloads)
    print(text)
    for warning in {str(w.message) for w in caught}:
        print(f"note: {warning}")
    print(f"wrote {', '.join(str(out / name) for name in payloads)}")
    return 0


def one_line(err: ValueError) -> str:
    """The error's first line: a library's message (Pyro's constraint errors print the tensor)
    may run on for many."""
    lines = str(err).strip().splitlines()
    return lines[0].rstrip(":") if lines else type(err).__name__


def interrupted_line(stop: Interrupted, out: Path) -> str:
    """The one line printed when SIGINT or SIGTERM stopped the run."""
    saved = stop.checkpoint is not None or (stop.step is None and (out / "checkpoint.pt").is_file())
    where = "interrupted" if stop.step is None else f"interrupted at step {stop.step}"
    if saved:
        return f"{where}; resume with --resume"
    return f"{where}; nothing was saved (pass --checkpoint-every N to make a run resumable)"


def config_from_args(args: argparse.Namespace, num_processes: int) -> RunConfig:
    """The run's config from the parsed flags; a flag left at ``None`` takes the default of the
    model and guide (:func:`gallery.app.config.make_config`)."""
    settings = {key: getattr(args, key) for key in (*WHERE, *OWN[1:]) if hasattr(args, key)}
    settings |= {"progress": not args.no_progress, "num_processes": num_processes}
    return make_config(args.model, **settings)


def launch(argv: list[str], num_processes: int) -> int:
    """Run ``python -m gallery`` with ``argv`` as ``num_processes`` processes of one torchrun
    job on this machine; return torchrun's exit status (0, or 1 when a process failed)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={num_processes}", "-m", "gallery", *argv]
    return subprocess.run(command).returncode


def without_num_processes(argv: list[str]) -> list[str]:
    """``argv`` without ``--num-processes N`` (or ``--num-processes=N``, or an abbreviation that
    argparse would accept, from ``--num-pro`` on)."""
    kept, skip = [], False
    for position, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token == "--":
            return kept + argv[position:]
        flag = token.split("=", 1)[0]
        if len(flag) >= len("--num-pro") and "--num-processes".startswith(flag):
            skip = "=" not in token
            continue
        kept.append(token)
    return kept
