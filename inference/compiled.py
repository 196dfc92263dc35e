"""One SVI step as one graph of tensor operations: the loss and its gradients, traced once.

Pyro's per-step Python (running model and guide under messengers, building traces, computing
log-densities) costs more than the arithmetic for every model the gallery ships. After the first
eager call has created every parameter, :class:`CompiledStep` traces

    (loss, grads) = (elbo.differentiable_loss(model, guide, x, subsample=idx),
                     d loss / d params)

with ``torch.fx.experimental.proxy_tensor.make_fx`` in its "real" mode: the trace runs the step
for real and records every aten operation, the backward pass included; the generators are then
set back and the first step, as every later one, is a replay of the graph. Inputs are the (B,)
minibatch indices ``idx`` (or, for rows read from a file each step, the (B, D) rows read,
outside the graph) and the parameters themselves, the very tensors the optimiser updates in
place, so the graph reads each step's values; data in memory is a constant of the graph.
Random draws are recorded as calls (``aten.normal``, ``aten.multinomial``, ...; make_fx never
folds an op tagged ``nondeterministic_seeded`` into a constant) on torch's default generator,
so the graph draws what the eager step would draw, step after step.

``mode="graph"`` runs the traced graph (CPU: bit for bit the eager step); ``mode="inductor"``
compiles it with ``torch.compile`` (on CUDA with ``mode="reduce-overhead"``: one CUDA-graph
replay per step). Inductor draws its own random numbers unless
``torch._inductor.config.fallback_random`` is set. A trace that fails (a value read to the host,
a data-dependent branch) restores the generators and falls back to the eager step, with one
warning naming the reason; an inductor compile that fails falls back to the traced graph.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

COMPILE_MODES = ("off", "graph", "inductor", "auto")
AUTO_MIN_STEPS = 1000  # "auto" traces runs of at least this many steps (on CPU, one process, in memory)


def choose_compile(mode: str, num_steps: int, device: torch.device, distributed: bool, on_disk: bool) -> str:
    """``mode``, with ``"auto"`` settled: ``"graph"`` for a run of at least
    :data:`AUTO_MIN_STEPS` steps on CPU, in one process, on rows in memory, else ``"off"``.

    Measured on the 2-core CPU (BENCHMARKS.md): tracing costs 0.2 to 0.9 s and saves 1 to 2 ms
    a step on iris and the digits (``run gmm``, ``run ppca``, ``run vae`` at 2,000 steps: 1.3x,
    1.9x, 1.5x faster SVI), so it pays from a few hundred steps on; with the same answer bit
    for bit. Inductor's 20 to 60 s compile pays only for long runs, so "auto" never picks it;
    CUDA, several processes and rows read from a file are left eager until measured there."""
    check_compile(mode)
    if mode != "auto":
        return mode
    eligible = device.type == "cpu" and not distributed and not on_disk
    return "graph" if eligible and num_steps >= AUTO_MIN_STEPS else "off"


def check_compile(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r}: choose one of {', '.join(COMPILE_MODES)}")


def compile_step(
    mode: str, loss_fn: Callable[[Tensor | None], Tensor], params: list[Tensor]
) -> CompiledStep | None:
    """The compiled step of ``mode``, or ``None`` for the eager one (``"off"``)."""
    check_compile(mode)
    if mode == "auto":
        raise ValueError("compile='auto' is settled by choose_compile first")
    return None if mode == "off" else CompiledStep(loss_fn, params, mode)


class CompiledStep:
    """``step(x) -> (loss, grads)``: the loss (a 0-d tensor, detached) and the gradient of every
    parameter in ``params`` (``None`` for one the loss does not depend on, as eager ``backward``
    leaves its ``.grad``), traced at the first call and replayed after it. The loss must be a
    function of ``x`` and the parameters alone: Python state that changes between steps (a
    counter, an annealing factor read from a global) would be frozen at its first value.

    :param loss_fn: ``loss_fn(x)``, the differentiable loss of one step: ``x`` (B,) minibatch
        indices or (B, D) rows, the same shape every call, or always ``None`` (full batch).
    :param params: the unconstrained tensors the loss reads from Pyro's param store.
    :param mode: ``"graph"`` or ``"inductor"``.
    """

    def __init__(self, loss_fn: Callable[[Tensor | None], Tensor], params: list[Tensor], mode: str):
        if mode not in COMPILE_MODES[1:]:
            raise ValueError(f"compile={mode!r}: a compiled step is 'graph' or 'inductor'")
        self.loss_fn, self.params, self.mode = loss_fn, params, mode
        self.graph: Callable | None = None
        self.used: list[bool] | None = None  # which params the loss depends on
        self.fallback: str | None = None  # why the step runs eagerly, once it does
        self.compile_seconds = 0.0

    def __call__(self, subsample: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
        if self.fallback is not None:
            return self._eager(subsample)
        if self.graph is None:
            return self._trace(subsample)
        return self._replay(subsample)

    def _trace(self, subsample: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
        generators = _rng_states(self.params[0].device)
        start = _now()
        try:
            self.traced = _pruned(make_fx(self._loss_and_grads)(*self._inputs(subsample)))
        except Exception as err:  # a host read, a data-dependent branch, an untraceable op
            _set_rng_states(generators)
            reason = _reason(err)
            self.fallback = f"compile={self.mode!r} fell back to eager: the step cannot be traced ({reason})"
            self._warn(self.fallback)
            return self._eager(subsample)
        # the trace ran the step for real: rerun it from the same generators through the graph,
        # so that step 0 is computed as every later step is
        _set_rng_states(generators)
        self.graph = self.traced
        if self.mode == "inductor":
            self.graph = _inductor(self.traced, self.params[0].device)
            try:
                result = self._replay(subsample)  # inductor compiles at its first call
            except Exception as err:  # before running anything: the generators are untouched
                _set_rng_states(generators)
                self._warn(f"compile='inductor' failed ({_reason(err)}); running the traced graph")
                self.graph = self.traced
                result = self._replay(subsample)
        else:
            result = self._replay(subsample)
        self.compile_seconds = _now() - start
        return result

    def _loss_and_grads(self, subsample: Tensor | None, *params: Tensor) -> tuple[Tensor, list[Tensor]]:
        loss = self.loss_fn(subsample)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        if self.used is None:
            self.used = [g is not None for g in grads]
        return loss.detach(), [g for g in grads if g is not None]

    def _inputs(self, subsample: Tensor | None) -> tuple:
        return (subsample, *self.params)

    def _replay(self, subsample: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
        if self.params[0].is_cuda and self.graph is not self.traced:
            torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are consumed
        with torch.no_grad():  # the graph holds the backward pass: nothing for autograd to record
            loss, grads = self.graph(*self._inputs(subsample))
        found = iter(grads)
        return loss, [next(found) if used else None for used in self.used]

    def _eager(self, subsample: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
        loss = self.loss_fn(subsample)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return loss.detach(), list(grads)

    def outcome(self) -> tuple[str, float]:
        """How the steps ran ("off" after a fallback to eager, "graph" after one from inductor)
        and the seconds spent tracing and compiling."""
        if self.fallback is not None or self.graph is None:
            return "off", 0.0
        return ("graph" if self.graph is self.traced else self.mode), self.compile_seconds

    @staticmethod
    def _warn(message: str, stacklevel: int = 4) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def compiled_svi_step(
    step: CompiledStep,
    params: list[Tensor],
    optimizer: torch.optim.Optimizer,
    subsample: Tensor | None,
    grad_hook: Callable[[list[Tensor]], None] | None = None,
    *,
    feed: Callable[[Tensor | None], Tensor | None] | None = None,
) -> Tensor:
    """:func:`inference.svi.svi_step` with the loss and gradients from ``step``: the same
    gradients land in ``.grad`` before the hook and the update; returns the detached loss.
    ``feed(subsample)``: the tensor the step reads, made outside the graph (the rows read from
    a file); default the indices themselves."""
    optimizer.zero_grad(set_to_none=True)
    loss, grads = step(subsample if feed is None else feed(subsample))
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    if grad_hook is not None:
        grad_hook(params)
    optimizer.step()
    return loss


def _pruned(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` without what a replay under ``no_grad`` need not run: ``detach`` (there is no
    autograd graph to cut) and values nothing reads. Kept: random draws (each moves the
    generator), in-place ops, and ops run for their effect alone, such as
    ``_linalg_check_errors`` (no outputs), so the replay draws and raises as eager does."""
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code(is_impure_node=_impure)
    graph.recompile()
    return graph


def _impure(node: torch.fx.Node) -> bool:
    effect_only = isinstance(node.target, torch._ops.OpOverload) and not node.target._schema.returns
    return node.is_impure() or effect_only


def _inductor(graph: torch.fx.GraphModule, device: torch.device) -> Callable:
    """``torch.compile`` of the traced graph; on CUDA as a CUDA graph replayed each step."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(graph, mode=mode, fullgraph=True, dynamic=False)


def _rng_states(device: torch.device) -> tuple[Tensor, list[Tensor] | None]:
    """torch's CPU generator and, for a run on CUDA, the GPUs' (a CPU run starts no CUDA)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[Tensor, list[Tensor] | None]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _reason(err: Exception) -> str:
    """The error's type and first sentence, for a one-line warning."""
    first = (str(err).strip().splitlines() or [""])[0]
    sentence = first.split(" - ")[0].split(". ")[0]
    return f"{type(err).__name__}: {sentence[:160]}"


_now = time.perf_counter


__all__ = [
    "AUTO_MIN_STEPS",
    "COMPILE_MODES",
    "choose_compile",
    "CompiledStep",
    "check_compile",
    "compile_step",
    "compiled_svi_step",
]
