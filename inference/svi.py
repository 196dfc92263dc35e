"""The one training loop: stochastic variational inference for any model and guide.

We maximise the evidence lower bound (Hoffman et al. 2013; Kingma and Welling 2014)

    F(q, lambda) = E_q[log p(x, z; lambda) - log q(z)] = log p(x) - KL(q || p(z | x)),

estimated with K reparameterised samples (``num_particles``, vectorised) and, for discrete
sites marked for enumeration, summed exactly by ``TraceEnum_ELBO``. The parameters are those
that a first traced call of model and guide creates, found as Pyro's own ``SVI`` finds them
(``poutine.trace(param_only=True)``): plain ``pyro.param`` sites, ``pyro.module`` networks and
autoguide parameters alike. One step is a function of one minibatch over that one list of
parameters, with an optional ``grad_hook(params)`` between backward and update (the place for
an all-reduce across processes). Minibatch indices are drawn on the data's device and passed
as ``subsample=`` to both model and guide, so per-datum guide parameters and the data they
describe are indexed by the same rows. With ``parallel=`` the loop is one of W data-parallel
processes on ``torch.distributed`` (:mod:`inference.distributed`): the data is this process's
shard, and the hook sums the gradients over the processes. Data left on disk
(:class:`gallery.data.mapped.MappedRows`) is read a minibatch at a time: model and guide then see the
B rows read, under ``poutine.scale(scale=N / B)``, the same estimator as the subsampled plate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from torch import Tensor, nn
from tqdm.auto import tqdm

from gallery.data.checks import check_data, clock, fitting
from gallery.data.mapped import MappedRows
from inference.checkpoint import Checkpointing, restore, rng_state, set_rng_state
from inference.compiled import check_compile, choose_compile, compile_step, compiled_svi_step
from inference.distributed import DataParallel
from inference.estimators import DeviceTrace_ELBO, DeviceTraceEnum_ELBO
from inference.interrupt import Interrupted, requested
from inference.iwae import IWAE, make_objective
from inference.per_datum import keeps_q_per_datum

MAX_PLATE_NESTING = 1  # every gallery model has one plate, "data"


@dataclass(frozen=True)
class SVIResult:
    losses: Tensor  # (num_steps,) -ELBO estimate of each step, scaled to the whole data set, CPU
    num_steps: int
    seconds: float
    elbo: str  # the estimator used: "Trace_ELBO" or "TraceEnum_ELBO"
    compiled: str = "off"  # how the steps ran: "off" (eager, also after a fallback), "graph", "inductor"
    compile_seconds: float = 0.0  # tracing and compiling the step, within ``seconds``


def uses_enumeration(model: Callable, guide: Callable, *args, **kwargs) -> bool:
    """True if any sample site of guide or model is marked ``infer={"enumerate": ...}``."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return any(
        site["type"] == "sample" and site["infer"].get("enumerate")
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
    )


def make_elbo(enumerate_discrete: bool, num_particles: int = 1) -> ELBO:
    """``TraceEnum_ELBO`` where a discrete site is enumerated, else ``Trace_ELBO`` (in their
    sync-free form, :mod:`inference.estimators`); particles are vectorised over a plate left of the
    data plate."""
    cls = DeviceTraceEnum_ELBO if enumerate_discrete else DeviceTrace_ELBO
    return cls(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=MAX_PLATE_NESTING,
    )


def collect_params(loss_fn: Callable[..., Tensor], *args, **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
    """Call ``loss_fn`` once under ``poutine.trace(param_only=True)`` and return its loss and the
    unconstrained tensors of every param site it touched, by param-store name in first-use
    order."""
    with poutine.trace(param_only=True) as capture:
        loss = loss_fn(*args, **kwargs)
    params, seen = {}, set()
    for name, site in capture.trace.nodes.items():
        tensor = site["value"].unconstrained()
        if id(tensor) not in seen:
            seen.add(id(tensor))
            params[name] = tensor
    return loss, params


def minibatches(
    num_data: int, batch_size: int | None, device: torch.device, seed: int = 0, start_step: int = 0
) -> Iterator[Tensor | None]:
    """Endless (B,) index tensors on ``device``, from step ``start_step`` on: each epoch a fresh
    permutation, cut into ``num_data // batch_size`` batches of exactly ``batch_size``. Epoch e's
    permutation depends only on ``(seed, e)``, so a resumed run draws the batches it would have
    drawn. ``None`` for full batch."""
    if batch_size is None or batch_size >= num_data:
        while True:
            yield None
    num_batches = num_data // batch_size
    generator = torch.Generator(device=device)
    epoch, position = divmod(start_step, num_batches)
    while True:
        generator.manual_seed(seed * 2**32 + epoch)
        perm = torch.randperm(num_data, device=device, generator=generator)
        yield from perm[: num_batches * batch_size].view(num_batches, batch_size)[position:]
        epoch, position = epoch + 1, 0


def make_optimizer(
    params: list[Tensor], *, lr: float, num_steps: int, final_lr_ratio: float = 0.1
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over ``params`` with the learning rate decaying geometrically from ``lr`` to
    ``lr * final_lr_ratio`` over ``num_steps``. Adam is torch's fused kernel where the
    parameters allow it: on CPU the default per-tensor loop took 1.8 ms per step for the VAE
    benchmark's 8 tensors, the fused one 0.16 ms (bench/vae_step.py)."""
    try:
        optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # a device or dtype without the fused kernel
        optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: final_lr_ratio ** (t / num_steps))
    return optimizer, schedule


def svi_step(
    loss_fn: Callable[[Tensor | None], Tensor],
    params: list[Tensor],
    optimizer: torch.optim.Optimizer,
    subsample: Tensor | None,
    grad_hook: Callable[[list[Tensor]], None] | None = None,
) -> Tensor:
    """One gradient step on one minibatch; returns the detached loss (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(subsample)
    loss.backward()
    if grad_hook is not None:
        grad_hook(params)
    optimizer.step()
    return loss.detach()


def fit_svi(
    model: Callable,
    guide: Callable,
    data: Tensor | MappedRows,
    *,
    num_steps: int,
    batch_size: int | None = None,
    lr: float = 0.01,
    final_lr_ratio: float = 0.1,
    num_particles: int = 1,
    objective: str = "elbo",
    elbo: ELBO | IWAE | None = None,
    seed: int | None = 0,
    progress: bool = True,
    grad_hook: Callable[[list[Tensor]], None] | None = None,
    checkpoint: Checkpointing | None = None,
    parallel: DataParallel | None = None,
    compile: str = "off",
    divergence_hint: Callable[[], str] | None = None,
    **model_kwargs,
) -> SVIResult:
    """Fit ``model`` and ``guide`` to ``data`` (N, D) by SVI with Adam.

    :param data: an (N, D) tensor, or rows on disk read a minibatch at a time (which needs a
        ``batch_size`` and a guide with no q per data point), see :func:`step_rows`.
    :param batch_size: minibatch size B (``None``: the full data every step).
    :param lr: Adam's initial learning rate, decayed geometrically to ``lr * final_lr_ratio``.
    :param num_particles: K samples per step (per data point) for the estimate, vectorised.
    :param objective: ``"elbo"``, or the K-sample importance-weighted bound ``"iwae"`` with the
        plain gradient or ``"iwae-dreg"`` with the doubly reparameterised one
        (:mod:`inference.iwae`).
    :param elbo: an ELBO instance; default :func:`make_elbo` chosen by :func:`uses_enumeration`
        for ``objective="elbo"``, else :func:`~inference.iwae.make_objective`.
    :param checkpoint: where and how often to save the run's state, and whether to resume from it;
        on CPU a resumed run ends with the parameters of an uninterrupted one, bit for bit
        (:class:`RunState`).
    :param parallel: this process's place among data-parallel processes; ``data`` is then its
        shard, ``batch_size`` its rows per step, and the networks must have been built from the
        same seed on every rank. Minibatches and Pyro's samples are seeded per rank
        (:meth:`~inference.distributed.DataParallel.batch_seed`, also with ``seed=None``); after
        the first call has created every parameter, rank 0's parameters and buffers are
        broadcast; each step's gradients are summed over the ranks before the caller's
        ``grad_hook``; only rank 0 writes checkpoints, with every rank's generator states, and
        every rank loads one to resume, bit for bit where the uninterrupted run would be. The
        finiteness checks are collective: a non-finite loss or parameter on one rank stops
        every rank with a ``ValueError`` naming it. The returned losses are
        summed over the ranks: the whole data's estimate.
    :param compile: ``"graph"``: the step (loss and gradients) traced into one graph, on CPU bit
        for bit the eager step; ``"inductor"``: that graph compiled by ``torch.compile``;
        ``"auto"``: :func:`~inference.compiled.choose_compile`. A step that cannot be traced runs
        eagerly, with one warning (:mod:`inference.compiled`).
    :param divergence_hint: called once when the loss or a parameter is found non-finite: what
        diverged in this model and the setting to change, for the error message (default: the
        mixture's and factor models' hint, a variance collapsing on constant columns or
        duplicated points).
    :param model_kwargs: passed to both model and guide (the same signature).
    :returns: the loss history; the fitted parameters are in Pyro's param store.
    """
    rows = step_rows(data)
    _check_arguments(rows, num_steps, batch_size, num_particles, seed)
    check_compile(compile)
    batch_seed = (seed or 0) if parallel is None else parallel.batch_seed(seed or 0)
    _refuse_guide(guide, rows, parallel)
    if parallel is not None or seed is not None:
        pyro.set_rng_seed(batch_seed)
    run = RunState.open(checkpoint, parallel)
    run.hint = divergence_hint
    batches = minibatches(rows.num_data, batch_size, rows.index_device, batch_seed, run.start_step)
    first = next(batches)
    if elbo is None:
        elbo = _objective(
            objective, num_particles, partial(rows.step_inputs(model, guide, model_kwargs), first), data
        )
    fed_inputs = rows.fed_inputs(model, guide, model_kwargs)

    def loss_of(fed: Tensor | None) -> Tensor:  # the loss of the tensor one step reads
        step_model, step_guide, step_data, kwargs = fed_inputs(fed)
        return elbo.differentiable_loss(step_model, step_guide, step_data, **kwargs)

    loss_fn = lambda subsample: loss_of(rows.feed(subsample))

    with fitting(data):
        _, named_params = collect_params(loss_fn, first)  # creates every parameter, with its constraint
    params = list(named_params.values())
    _refuse_guide(guide, rows, parallel)  # an autoguide's sites are known after its first call
    modules = networks(model, guide, model_kwargs)
    if parallel is not None:
        parallel.broadcast_parameters(params, modules)
        grad_hook = parallel.gradient_hook(then=grad_hook)
    optimizer, schedule = make_optimizer(params, lr=lr, num_steps=num_steps, final_lr_ratio=final_lr_ratio)
    losses = _loss_history(num_steps, rows)
    state = dict(
        params=named_params, modules=modules, optimizer=optimizer, scheduler=schedule, device=rows.device
    )
    run.begin(losses, state)
    start = clock(data)
    compile = choose_compile(compile, num_steps, rows.device, parallel is not None, rows.on_disk)
    if (compiled := compile_step(compile, loss_of, params)) is None:
        step = partial(svi_step, loss_fn, params, optimizer, grad_hook=grad_hook)
    else:
        step = partial(compiled_svi_step, compiled, params, optimizer, grad_hook=grad_hook, feed=rows.feed)
    _train(step, schedule, batches, first, run, params, progress, rows.num_data)
    run.finish(params)
    seconds = clock(data) - start
    estimator, how = getattr(elbo, "estimator", type(elbo).__name__), ("off", 0.0)
    return SVIResult(losses.cpu(), num_steps, seconds, estimator, *(compiled.outcome() if compiled else how))


def _objective(objective: str, num_particles: int, first_inputs: Callable[[], tuple], data) -> ELBO | IWAE:
    """The estimator of ``objective``: for the ELBO, ``TraceEnum_ELBO`` where the first step's
    model or guide enumerates a site, else ``Trace_ELBO`` (:func:`make_elbo`); for ``"iwae"``
    and ``"iwae-dreg"`` :func:`~inference.iwae.make_objective`."""
    if objective != "elbo":
        return make_objective(objective, num_particles, MAX_PLATE_NESTING)
    first_model, first_guide, first_data, first_kwargs = first_inputs()
    with fitting(data):  # data of another width than init, decoder or encoder: one line
        enumerated = uses_enumeration(first_model, first_guide, first_data, **first_kwargs)
    return make_elbo(enumerated, num_particles)


def _loss_history(num_steps: int, rows: MemoryRows | DiskRows) -> Tensor:
    """(num_steps,) on the data's device, for the losses the loop writes without a host sync."""
    try:
        return torch.empty(num_steps, dtype=rows.dtype, device=rows.device)
    except (RuntimeError, MemoryError):  # torch's allocator: "can't allocate memory"
        raise ValueError(f"num_steps={num_steps}: no memory for the loss history; use fewer steps") from None


def _train(
    step: Callable[[Tensor | None], Tensor],
    schedule: torch.optim.lr_scheduler.LambdaLR,
    batches: Iterator[Tensor | None],
    subsample: Tensor | None,
    run: RunState,
    params: list[Tensor],
    progress: bool,
    num_data: int,
) -> None:
    """The loop: step, decay the rate, draw the next minibatch; check and checkpoint as due."""
    losses, num_steps = run.losses, len(run.losses)
    log_every = max(1, num_steps // 20)
    show = progress and (run.parallel is None or run.parallel.is_root)
    with pyro.validation_enabled(False):  # argument checks would sync with the host every step
        hide = None if show else True  # None: tqdm shows the bar on a terminal only
        bar = tqdm(range(run.start_step, num_steps), desc="SVI", disable=hide, leave=False)
        for t in bar:
            try:
                losses[t] = step(subsample)
            except torch.linalg.LinAlgError as err:  # a covariance the parameters imply broke down
                reason = str(err).splitlines()[0].rstrip(".")
                raise ValueError(
                    f"SVI diverged at step {t}: {reason}; lower the learning rate{run.note}"
                ) from None
            schedule.step()
            subsample = next(batches)
            if (t + 1) % log_every == 0:  # one host sync every 5% of the run
                _check_finite(losses, t, params, run.note, run.parallel, run.hint)
                bar.set_postfix(elbo_per_datum=f"{-float(losses[t]) / num_data:.4f}")
            run.after_step(t + 1, params)
            if (signum := requested()) is not None:  # SIGINT or SIGTERM: stop at this boundary
                run.stop(t + 1, params, signum)


def _check_arguments(
    rows: MemoryRows | DiskRows, num_steps: int, batch_size: int | None, num_particles: int, seed: int | None
) -> None:
    if rows.on_disk and batch_size is None:
        raise ValueError("data read from a file is read a minibatch at a time: pass a batch_size")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be at least 1")
    if batch_size is not None and not 1 <= batch_size <= rows.num_data:
        raise ValueError(f"batch_size={batch_size} must be between 1 and num_data={rows.num_data}")
    if num_particles < 1:
        raise ValueError(f"num_particles={num_particles} must be at least 1")
    if seed is not None and seed < 0:
        raise ValueError(f"seed={seed} must be at least 0")


def _refuse_guide(guide: Callable, rows: MemoryRows | DiskRows, parallel: DataParallel | None) -> None:
    """Refuse a guide with a q per data point (:func:`keeps_q_per_datum`) on rows read from a
    file or split over processes."""
    if parallel is not None:
        parallel.check_guide(guide)
    if rows.on_disk and keeps_q_per_datum(guide):
        raise ValueError(
            f"guide {type(guide).__name__} keeps a q for every data point, which a run that reads "
            "its rows from a file a minibatch at a time cannot index; use --guide amortised or exact"
        )


@dataclass(frozen=True)
class MemoryRows:
    """(N, D) rows in memory: every step sees the whole data with ``subsample=`` (the plate scales
    by N / B and indexes per-datum guide parameters by the same rows)."""

    data: Tensor
    on_disk = False

    @property
    def num_data(self) -> int:
        return self.data.shape[0]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def index_device(self) -> torch.device:
        return self.data.device

    def step_inputs(self, model: Callable, guide: Callable, model_kwargs: dict) -> StepInputs:
        """``inputs(subsample)``: the model, guide, data and keyword arguments of one step."""
        return lambda subsample: self.fed_inputs(model, guide, model_kwargs)(self.feed(subsample))

    def feed(self, subsample: Tensor | None) -> Tensor | None:
        """The tensor a step's computation reads (a compiled step's input): here the indices."""
        return subsample

    def fed_inputs(self, model: Callable, guide: Callable, model_kwargs: dict) -> StepInputs:
        """``inputs(feed(subsample))``: :meth:`step_inputs` from the fed tensor."""
        return lambda subsample: (model, guide, self.data, {"subsample": subsample, **model_kwargs})


@dataclass(frozen=True)
class DiskRows(MemoryRows):
    """(N, D) rows on disk (:class:`~gallery.data.mapped.MappedRows`): every step reads its B rows
    (indices drawn on the host) and runs model and guide on them under ``poutine.scale(N / B)``,
    the same estimator as the subsampled plate."""

    data: MappedRows
    on_disk = True

    @property
    def num_data(self) -> int:
        return len(self.data)

    @property
    def index_device(self) -> torch.device:
        return torch.device("cpu")  # a file is read from the host

    def feed(self, subsample: Tensor) -> Tensor:
        """The (B, D) rows ``subsample`` read from the file: a compiled step's input."""
        return self.data.rows(subsample)

    def fed_inputs(self, model: Callable, guide: Callable, model_kwargs: dict) -> StepInputs:
        def inputs(rows: Tensor) -> tuple[Callable, Callable, Tensor, dict]:
            scaled = poutine.scale(scale=len(self.data) / len(rows))
            return scaled(model), scaled(guide), rows, model_kwargs

        return inputs


StepInputs = Callable[[Tensor | None], tuple[Callable, Callable, Tensor, dict]]


def step_rows(data: Tensor | MappedRows) -> MemoryRows | DiskRows:
    """The rows SVI steps on, by where they are: the one place that asks; an in-memory tensor is
    checked (2-D, finite) by :func:`~gallery.data.checks.check_data`."""
    return DiskRows(data) if isinstance(data, MappedRows) else MemoryRows(check_data(data))


@dataclass
class RunState:
    """The checkpoint side of one SVI run: what was resumed, the loss history that is summed over
    the ranks (``losses[:summed]``), and the note that error messages append once a checkpoint is
    on disk. Only rank 0 writes; every rank gives its generators and reads the file to resume."""

    checkpoint: Checkpointing | None
    parallel: DataParallel | None
    resumed: dict | None
    losses: Tensor | None = None
    state: dict | None = None
    summed: int = 0
    note: str = ""
    hint: Callable[[], str] | None = None  # what diverged, for the message (fit_svi's divergence_hint)

    @classmethod
    def open(cls, checkpoint: Checkpointing | None, parallel: DataParallel | None) -> RunState:
        resumed = checkpoint.load() if checkpoint is not None and checkpoint.resume else None
        return cls(checkpoint, parallel, resumed, summed=0 if resumed is None else resumed["step"])

    @property
    def start_step(self) -> int:
        return 0 if self.resumed is None else self.resumed["step"]

    def begin(self, losses: Tensor, state: dict) -> None:
        """Restore the resumed state into ``state`` and ``losses`` (num_steps,), or save step 0."""
        self.losses, self.state = losses, state
        num_steps = len(losses)
        if self.resumed is not None:
            restore(self.resumed, **state, num_steps=num_steps, loss_dtype=losses.dtype)
            losses[: self.start_step] = self.resumed["losses"].to(losses)
            if self.parallel is not None:  # restore() set rank 0's generators; each rank takes its own
                _restore_rank_generators(self.resumed, self.parallel, state["device"])
        elif self.checkpoint is not None and self.checkpoint.every is not None:
            self._save(0)  # the starting point is on disk too

    def after_step(self, steps_done: int, params: list[Tensor]) -> None:
        """Checkpoint after ``steps_done`` steps when due; nothing non-finite is saved."""
        if self.checkpoint is not None and self.checkpoint.due(steps_done, len(self.losses)):
            _check_finite(self.losses, steps_done - 1, params, self.note, self.parallel, self.hint)
            self._sum_losses(steps_done)
            self._save(steps_done)

    def stop(self, steps_done: int, params: list[Tensor], signum: int) -> None:
        """Save the state after ``steps_done`` steps (when the run has a checkpoint and it is
        not saved already) and raise :class:`~inference.interrupt.Interrupted`."""
        checkpoint = self.checkpoint
        if checkpoint is not None and not checkpoint.due(steps_done, len(self.losses)):
            _check_finite(self.losses, steps_done - 1, params, self.note, self.parallel, self.hint)
            self._sum_losses(steps_done)
            self._save(steps_done)
        raise Interrupted(signum, steps_done, None if checkpoint is None else checkpoint.path)

    def finish(self, params: list[Tensor]) -> None:
        num_steps = len(self.losses)
        _check_finite(self.losses, num_steps - 1, params, self.note, self.parallel, self.hint)
        self._sum_losses(num_steps)

    def _sum_losses(self, stop: int) -> None:
        if self.parallel is not None and stop > self.summed:
            self.parallel.sum_(self.losses[self.summed : stop])
            self.summed = stop

    def _save(self, step: int) -> None:
        parallel, state = self.parallel, self.state
        rank_rng = None if parallel is None else parallel.all_gather(rng_state(state["device"]))
        if parallel is None or parallel.is_root:
            self.checkpoint.save(step=step, losses=self.losses[:step], rank_rng=rank_rng, **state)
        self.note = f"; the last good checkpoint (step {step}) is kept at {self.checkpoint.path}"


def _restore_rank_generators(resumed: dict, parallel: DataParallel, device: torch.device) -> None:
    ranks = resumed.get("rank_rng") or []
    if len(ranks) != parallel.world_size:
        raise ValueError(
            f"the checkpoint holds the generators of {len(ranks)} processes, this run has "
            f"{parallel.world_size}; resume with as many processes as wrote it"
        )
    set_rng_state(ranks[parallel.rank], device)


def networks(model: Callable, guide: Callable, model_kwargs: dict) -> dict[str, nn.Module]:
    """The ``nn.Module``s among model, guide and keyword arguments, by role, for checkpoints."""
    found = {"model": model, "guide": guide, **model_kwargs}
    return {name: value for name, value in found.items() if isinstance(value, nn.Module)}


def _check_finite(
    losses: Tensor,
    step: int,
    params: list[Tensor],
    note: str = "",
    parallel: DataParallel | None = None,
    hint: Callable[[], str] | None = None,
) -> None:
    """Raise if any loss up to ``step`` or any parameter is NaN or infinite, naming the first
    such step. With ``parallel`` every rank takes part and every rank raises if one fails:
    a rank that stopped alone would leave the others waiting in their next all-reduce."""
    bad = (~torch.isfinite(losses[: step + 1])).nonzero()
    params_finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
    failed = len(bad) > 0 or not bool(params_finite)
    on_rank = ""
    if parallel is not None:
        failed_ranks = parallel.ranks_where(failed, losses.device)
        if failed_ranks and not failed:
            raise ValueError(
                f"SVI diverged on rank {failed_ranks[0]} of {parallel.world_size} by step {step} (its loss "
                f"or a parameter is not finite); lower the learning rate{note}"
            )
        on_rank = f" on rank {parallel.rank} of {parallel.world_size}"
    if failed:
        where = (
            f"the loss is not finite at step {int(bad[0])}"
            if len(bad)
            else f"a parameter is not finite after step {step}"
        )
        advice = (
            "lower the learning rate, or check the data for constant columns or duplicated points (a "
            "variance can collapse to 0)"
            if hint is None
            else hint()
        )
        raise ValueError(f"SVI diverged{on_rank}: {where}; {advice}{note}")
