r"""Data-parallel SVI on ``torch.distributed``: W processes, each with a shard of the rows, one
all-reduce of the gradients per step.

The processes are started by ``torchrun`` (or ``python -m gallery run ... --num-processes W``,
which starts ``torchrun`` itself) and talk through ``torch.distributed``: gloo on CPU, NCCL on
CUDA. Every process builds the same model and guide from the same seed, trains on its own
contiguous rows, and after each backward pass adds up the gradients of all processes, so all
of them take the same Adam step and keep the same parameters.

**Why the gradients are summed, not averaged.** Rank r holds N_r of the N rows (sum_r N_r = N)
and draws a minibatch b_r of B of its rows. Its model's data plate has size N_r, so its loss is

.. math::

    L_r = \frac{N_r}{B} \sum_{n \in b_r} \ell_n, \qquad
    \ell_n = -\big(\log p(x_n, z_n) - \log q(z_n)\big),

an unbiased estimate of its shard's negative ELBO, sum over n in shard r of E[ell_n]. The sum
over ranks, L = sum_r L_r, is therefore an unbiased estimate of the whole data's negative ELBO,
and its gradient is the sum of the ranks' gradients: an all-reduce with SUM. (The mean would
be the same direction at 1/W of the size, the gradient of an estimate of 1/W of the ELBO.) With
equal shards, N_r = N / W, every row has the weight N / (W B) and L is exactly the loss that one
process computes on the whole data with the union of the ranks' batches as its minibatch of
W B rows; with full batches (no ``batch_size``) L is the whole data's loss itself. The models'
terms all sit in the data plate: a term outside it (the prior of a global latent) would be
counted W times and would have to be divided by W.

**What scales.** Guides whose parameters are shared by all rows (the amortised encoders, the
exact posteriors, and for the mixture Pyro's ``AutoNormal``, which has nothing per datum because
c is summed out in the model) scale as they are. Per-datapoint guides (mean-field tables,
``AutoNormal`` for z) would be split across the processes, each training its own copy of every
row's q, so :meth:`DataParallel.check_guide` refuses them.

**Randomness.** Parameters and networks start equal on every rank (same seed), and
:meth:`DataParallel.broadcast_parameters` copies rank 0's after the first call, which creates
lazily built parameters. Minibatch order and Pyro's samples differ by rank
(:meth:`DataParallel.batch_seed`).

**Checkpoints and failures.** Only rank 0 writes checkpoints (with the loss history summed over
the ranks, and every rank's generator states, gathered by :meth:`DataParallel.all_gather`);
every rank reads the same file to resume and takes back its own generators, so a resumed run
is, bit for bit, the uninterrupted one, samples included. The periodic check that losses
and parameters are finite is collective (one all-reduce of a flag per rank), so a divergence on
one rank stops every rank with a ``ValueError``; a rank that stopped alone would leave the
others waiting in their next all-reduce. An error inside a step on one rank only does leave them
waiting, until ``torchrun`` stops them as that process exits (or gloo's 30-minute timeout runs
out); the covariances the gallery factorises in a step depend on the shared parameters alone,
so when one breaks down it breaks down on every rank.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from inference.per_datum import keeps_q_per_datum


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world_size`` data-parallel processes (rank 0 to W - 1)."""

    rank: int
    world_size: int

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")

    @classmethod
    def from_environment(cls, device: str | torch.device = "cpu") -> DataParallel | None:
        """The process group that ``torchrun`` describes in ``RANK``, ``WORLD_SIZE`` and
        ``LOCAL_RANK``, initialised here if it is not yet (backend ``"nccl"`` for a CUDA
        ``device``, else ``"gloo"``; on CUDA each process takes GPU ``LOCAL_RANK``). ``None``
        when ``WORLD_SIZE`` is absent or 1: a single process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        rank = int(os.environ["RANK"])
        cuda = str(device).split(":")[0] == "cuda" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(rank, world_size)

    def close(self) -> None:
        """Leave the process group and free it while Python is still running: a gloo group left
        to the interpreter's final garbage collection (a reference cycle keeps it alive past
        ``destroy_process_group``) was seen to abort the process at exit (SIGABRT)."""
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()

    @property
    def is_root(self) -> bool:
        """Rank 0: the process that writes checkpoints and outputs."""
        return self.rank == 0

    def shard(self, num_data: int) -> tuple[int, int]:
        """``(start, stop)``: this rank's contiguous rows of ``num_data``; shard sizes differ by
        at most one row."""
        if num_data < self.world_size:
            raise ValueError(
                f"{num_data} rows cannot be split over {self.world_size} processes; use at most "
                f"{num_data} processes"
            )
        return self.rank * num_data // self.world_size, (self.rank + 1) * num_data // self.world_size

    def batch_seed(self, seed: int) -> int:
        """``seed * world_size + rank``: this rank's seed for minibatch order and for Pyro's
        samples, different on every rank and for every seed at one world size. (With one seed
        for all, equal shards would be cut into batches at the same local rows on every rank.)"""
        return seed * self.world_size + self.rank

    def check_guide(self, guide: Callable) -> None:
        """Refuse a guide with per-datapoint parameters when there is more than one process.
        A Pyro autoguide is known only after its first call; check it again then."""
        if self.world_size > 1 and keeps_q_per_datum(guide):
            raise ValueError(
                f"guide {type(guide).__name__} keeps a q for every data point, which cannot be split "
                f"over {self.world_size} processes (each would train its own copy of its rows); use "
                "--guide amortised (one encoder for all rows) or exact"
            )

    def all_reduce_gradients(self, params: list[Tensor]) -> None:
        """Replace every parameter's gradient by its sum over the ranks: one all-reduce of one
        flat buffer (per dtype and device; one for every gallery model). A missing gradient
        counts as zeros, so every rank sends a buffer of the same size."""
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        _in_flat_buffers([p.grad for p in params], dist.all_reduce)

    def gradient_hook(
        self, then: Callable[[list[Tensor]], None] | None = None
    ) -> Callable[[list[Tensor]], None]:
        """A ``grad_hook`` for :func:`inference.svi.svi_step`: the all-reduce, then ``then``."""

        def hook(params: list[Tensor]) -> None:
            self.all_reduce_gradients(params)
            if then is not None:
                then(params)

        return hook

    def broadcast_parameters(self, params: Iterable[Tensor], modules: dict[str, nn.Module]) -> None:
        """Copy rank 0's parameters and the modules' parameters and buffers to every rank."""
        tensors, seen = [], set()
        for tensor in [*params, *(t for m in modules.values() for t in [*m.parameters(), *m.buffers()])]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(tensor)
        with torch.no_grad():
            _in_flat_buffers(tensors, lambda flat: dist.broadcast(flat, src=0))

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum a contiguous tensor over the ranks, in place."""
        dist.all_reduce(tensor)
        return tensor

    def all_gather(self, value: object) -> list:
        """Every rank's ``value`` (a picklable object), by rank, on every rank."""
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def ranks_where(self, flag: bool, device: torch.device) -> list[int]:
        """The ranks on which ``flag`` is true, the same list on every rank (one all-reduce)."""
        flags = torch.zeros(self.world_size, dtype=torch.int64, device=device)
        flags[self.rank] = int(flag)
        dist.all_reduce(flags)
        return flags.nonzero().flatten().tolist()


def _in_flat_buffers(tensors: list[Tensor], collective: Callable[[Tensor], object]) -> None:
    """Run ``collective`` in place on one flat copy of ``tensors`` per (dtype, device) and copy
    the results back."""
    groups: dict[tuple, list[Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = _flatten_dense_tensors(group)
        collective(flat)
        for tensor, value in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            tensor.copy_(value)


__all__ = ["DataParallel"]
