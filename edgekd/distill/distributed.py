"""Multi-process training with torch.distributed: what the trainer needs, in one place.

Under ``torchrun --nproc_per_node=N edgekd run RECIPE`` every process runs the same pipeline.
``init_from_env`` starts the process group from the variables torchrun sets (gloo: edgekd
trains on CPU tensors, which nccl cannot reduce); ``Distributed.current()`` then describes this
process:

- ``wrap(model)``: DistributedDataParallel around the student (the teacher stays outside DDP:
  it is not trained, and hooks find its modules without a ``module.`` prefix);
- ``shard(batch_indices)``: this rank's share of a global batch (rank r takes every N-th
  sample from r), so N processes see the same global batches a single process would;
- ``average_gradients(params)``: all-reduce for parameters outside the DDP model (feature
  adapters);
- ``sum_dict``: reduces the per-term loss sums, so every rank logs the same metrics;
- ``broadcast_model``: rank 0's weights and BatchNorm statistics to every rank at the end of a
  stage (BatchNorm statistics are per process during training), so all ranks go on with the
  model rank 0 saves;
- ``barrier``: wait for every rank (e.g. after rank 0 cleared old checkpoints).

Only rank 0 writes checkpoints and artifacts. Without a process group everything is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn


def init_from_env() -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); True if started."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group(backend="gloo")  # edgekd trains on CPU tensors (nccl needs CUDA ones)
    return True


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group():
    """The process group of a torchrun launch for the duration of a run (a no-op in a single
    process): started from torchrun's variables, destroyed when the block ends or fails."""
    started = init_from_env()
    try:
        yield Distributed.current()
    finally:
        if started:
            shutdown()


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> Distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return Distributed(dist.get_rank(), dist.get_world_size())
        return Distributed()

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        return indices[self.rank::self.world] if self.active else indices

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def broadcast_model(self, model: nn.Module) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def sum_dict(self, values: dict[str, float]) -> dict[str, float]:
        if not self.active or not values:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))
