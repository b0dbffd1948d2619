"""Running on several processes with PyTorch's own engine (``torch.distributed``): which rank this process is,
which share of the work is its own, and when to wait for the others.

``torchrun --nproc-per-node N -m nnfeat <command> ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_env` (called by the CLI) joins them in
one process group: gloo on the CPU, nccl when each rank has a CUDA GPU (rank ``LOCAL_RANK`` takes
``cuda:LOCAL_RANK``). A plain process is rank 0 of 1, and every function here is then a no-op.

The rule every sharded stage keeps: work is numbered (batches, units, icon batches) and item ``i`` belongs to
rank ``i % world`` (:meth:`Ranks.mine`); its randomness comes from ``(seed, i)`` only, so the bytes do not depend
on the rank count. Each rank writes only its own per-item records; after :meth:`Ranks.barrier`, rank 0
(:attr:`Ranks.writer`) writes the shared files (manifests, stitched images, pages).

A dataset pass of a view (heatmaps, saliency and its sanity numbers, uncertainty) is a list of chunks whose
results every rank then needs: :func:`shard_map` computes chunk ``i`` on rank ``i % world`` and hands every rank
the whole list in chunk order, so whatever is built from it afterwards is the same on every rank and equal to
one process's.

A piece of work that one rank does on its own inside a group (a report stage that is rank 0's, or one rank's
share) runs under :func:`alone`: there :func:`current` is rank 0 of 1, so a function that would otherwise be
a collective (a collection) runs whole in this process and issues no collective the other ranks would wait for.
"""

from __future__ import annotations

import os
import pickle
import socket
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """Whether this rank writes the shared files (rank 0)."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def mine(self, count: int) -> list[int]:
        """The item indices ``0..count-1`` this rank does: ``i % world == rank``."""
        return list(range(self.rank, count, self.world))

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def barrier(self) -> None:
        """Wait until every rank reaches this point (no-op on one process)."""
        if self.sharded and dist.is_available() and dist.is_initialized():
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (a collective; ``flag`` itself on one process)."""
        if not (self.sharded and dist.is_initialized()):
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32,
                             device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


_alone: ContextVar["Ranks | None"] = ContextVar("nnfeat_ranks_alone", default=None)


@contextmanager
def alone() -> Iterator[Ranks]:
    """Within the block :func:`current` is rank 0 of 1 (this process works on its own: no collectives, it
    writes what it makes); the group itself is untouched."""
    ranks = Ranks(0, 1, current().local_rank)
    token = _alone.set(ranks)
    try:
        yield ranks
    finally:
        _alone.reset(token)


def current() -> Ranks:
    """The ranks of the initialized process group, else rank 0 of 1 (also inside :func:`alone`)."""
    override = _alone.get()
    if override is not None:
        return override
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Ranks()


def launched_world() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init_from_env(backend: str | None = None) -> Ranks:
    """Join the process group torchrun described in the environment (nothing when ``WORLD_SIZE`` is 1 or the
    group exists). ``backend``: default nccl when CUDA is available, else gloo."""
    if launched_world() <= 1 or not dist.is_available():
        return current()
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return current()


def finish() -> None:
    """Leave the process group (after a final barrier), if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


T = TypeVar("T")


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (lists, tuples, dicts) moved to the CPU (results travel pickled)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    return value


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (so another rank can raise it), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - any exception that cannot travel is sent as its text
        return RuntimeError(f"{type(err).__name__}: {err}")


def shard_map(fn: Callable[[int], T], count: int, ranks: Ranks | None = None) -> list[T]:
    """``[fn(0), ..., fn(count - 1)]`` with item ``i`` computed on rank ``i % world``, every rank getting the whole
    list (a collective when sharded: every rank calls it with the same ``count``; inside :func:`alone`, or in one
    process, it is a plain loop and results are returned as ``fn`` made them). Sharded, the tensors in the
    results come back on the CPU (they travel pickled); callers move them where they need them.

    ``fn(i)`` must depend only on ``i`` and on what every rank holds alike (the chunk's own data and seeds from
    ``(seed, i)``), so the list is the same for any rank count. An exception in ``fn`` on any rank is raised on
    every rank (the one from the lowest item index), so no rank waits for a rank that failed.
    """
    ranks = ranks if ranks is not None else current()
    if not (ranks.sharded and dist.is_available() and dist.is_initialized()):
        return [fn(i) for i in range(count)]
    mine: dict[int, Any] = {}
    failure: tuple[int, BaseException] | None = None
    for i in ranks.mine(count):
        try:
            mine[i] = _on_cpu(fn(i))
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            failure = (i, err)
            break
    parts: list[Any] = [None] * ranks.world
    dist.all_gather_object(parts, (mine, None if failure is None else (failure[0], _portable(failure[1]))))
    failures = sorted((f for _, f in parts if f is not None), key=lambda f: f[0])
    if failures:
        if failure is not None and failure[0] == failures[0][0]:
            raise failure[1]
        raise failures[0][1]
    merged: dict[int, Any] = {}
    for results, _ in parts:
        merged.update(results)
    return [merged[i] for i in range(count)]


def _spawned(index: int, fn: Callable, world: int, port: int, args: Sequence) -> None:
    os.environ.update(RANK=str(index), WORLD_SIZE=str(world), LOCAL_RANK=str(index), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=index, world_size=world)
    try:
        fn(*args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world: int, *args) -> None:
    """Run ``fn(*args)`` on ``world`` CPU processes joined by gloo (``torch.multiprocessing``), as torchrun
    would; for tests and notebooks. ``fn`` must be importable (a module-level function)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_spawned, args=(fn, world, port, args), nprocs=world, join=True)


__all__ = ["Ranks", "current", "alone", "shard_map", "init_from_env", "finish", "launched_world", "spawn"]
