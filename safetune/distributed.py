"""Running on several processes: torch.distributed, as torchrun or accelerate launch it.

Both launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; safetune
reads them, joins the process group (NCCL on GPUs, gloo on CPUs) and wraps the model in
DistributedDataParallel. There is no second training loop: `Trainer` asks this module
who it is (rank, world size) and the rest of the loop is the same on 1..N processes.

What each rank does:
- every rank builds the same global micro-batch (a pure function of seed and step, safety
  methods' additions included) and trains on its own slice of it;
- DDP averages the gradients during backward, so methods that edit gradients
  (SafeGrad) see the same synchronised gradients on every rank and compute the same
  safety gradient from the same safety examples: every rank makes the same edit;
- rank 0 alone writes files (run directory, metrics, checkpoints, reports) and
  evaluates; the others wait at a barrier where they must.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# The baseline evaluation runs on rank 0 while the others wait: allow it time.
BARRIER_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """Join the process group a launcher prepared; a plain `safetune train` is world size 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, items: list) -> list:
        """This rank's slice of a global batch (every rank gets a share; together, all of it)."""
        return items[self.rank :: self.world_size] if self.enabled else items

    def broadcast(self, value):
        """Rank 0's value on every rank (e.g. where to resume from)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` in place with rank 0's: a safety-side quantity (a safety gradient,
        a Fisher) must be the same on every rank, and kernels need not be bit-identical across GPUs."""
        if self.enabled:
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the task forward pass goes through: DDP when distributed, else the model."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
