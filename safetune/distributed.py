"""Running on several processes: torch.distributed, as torchrun or accelerate launch it.

Both launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; safetune
reads them, joins the process group (NCCL on GPUs, gloo on CPUs) and distributes the model
by `train.distributed.strategy`:

- `ddp`: DistributedDataParallel. Every rank holds the whole model; gradients are
  all-reduced during backward. For models that fit one device.
- `fsdp`: torch's FSDP2 (`fully_shard`, each decoder layer and then the whole model).
  Parameters, gradients and optimizer state are sharded across ranks (DTensors, split
  along dim 0); a layer's full weights exist only while it computes. For models that do
  not fit one device. `accelerate launch --use_fsdp` selects it too. Rank 0 alone reads
  the weights (into CPU memory); the others build the model on the meta device and
  receive only their shards (`load_shards`).

There is no second training loop: `Trainer` asks this module who it is (rank, world size)
and the rest of the loop is the same on 1..N processes.

What each rank does:
- every rank builds the same global micro-batch (a pure function of seed and step, safety
  methods' additions included) and trains on its own slice of it;
- DDP averages the gradients during backward, so methods that edit gradients
  (SafeGrad) see the same synchronised gradients on every rank and compute the same
  safety gradient from the same safety examples: every rank makes the same edit;
- rank 0 alone writes files (run directory, metrics, checkpoints, reports) and
  evaluates; the others wait at a barrier where they must;
- under FSDP no rank can run the model alone (each forward gathers the layers' shards
  from every rank): safety probes, the held-out loss and the final evaluation run on
  every rank on the same prompts (`mirrored`), and only rank 0 writes. Methods' sums
  over parameters (SafeGrad's dot products, norms) are per-shard partial sums added up
  across ranks (`sum_over_shards`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch build without torch.distributed: nothing is ever sharded

    class DTensor:  # type: ignore[no-redef]
        pass

    distribute_tensor = None

# The baseline evaluation runs on rank 0 while the others wait: allow it time.
BARRIER_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"  # "ddp" | "fsdp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP: no rank holds the whole model, so model passes run on every rank (mirrored)."""
        return self.enabled and self.strategy == "fsdp"

    @classmethod
    def from_env(cls, strategy: str = "ddp") -> "Distributed":
        """Join the process group a launcher prepared; a plain `safetune train` is world size 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):  # accelerate launch --use_fsdp
            strategy = "fsdp"
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, strategy=strategy)

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

    def all_gather(self, value) -> list:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` in place with rank 0's: a safety-side quantity (a safety gradient,
        a Fisher) must be the same on every rank, and kernels need not be bit-identical across GPUs.
        Sharded tensors (FSDP) are skipped: each rank holds a different shard, and FSDP's
        reduce-scatter already gave every shard the same (averaged) value."""
        if self.enabled:
            for tensor in tensors:
                if not isinstance(tensor, DTensor):
                    dist.broadcast(tensor, src=0)

    def shard_model(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """FSDP2: shard each decoder layer, then the rest (embeddings, final norm, head) as one group.

        In place (the model's class becomes FSDP<Class>); parameter names do not change. Call
        before the optimizer is built, so it holds the sharded parameters.
        """
        if not self.sharded:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from safetune.model_layers import decoder_layers

        mesh = init_device_mesh(device.type, (self.world_size,))
        _, blocks = decoder_layers(model)
        for block in blocks:
            fully_shard(block, mesh=mesh)
        # LoRA: the root is the transformers model inside peft's wrapper (which has no parameters of
        # its own): peft's generate() calls that model directly, past the wrapper's forward
        root = model.get_base_model() if hasattr(model, "get_base_model") else model
        fully_shard(root, mesh=mesh)
        return model

    def load_shards(self, model: torch.nn.Module, whole: dict[str, torch.Tensor] | None,
                    buffers: dict[str, torch.Tensor] | None, device: torch.device) -> torch.nn.Module:
        """FSDP without a whole copy per rank: shard `model` (built on the meta device), then fill
        every rank's shards from rank 0's whole weights, one tensor at a time.

        `whole` (the state dict) and `buffers` (every buffer: non-persistent ones such as
        RoPE's `inv_freq` are in no state dict) are read on rank 0 only; pass None elsewhere.
        torch's `set_model_state_dict(broadcast_from_rank0=True)` sends each tensor and
        keeps this rank's slice, so no rank ever holds more than one whole tensor beyond its
        shards (rank 0's CPU copy aside).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        self.shard_model(model, device)
        model.to_empty(device=device)  # this rank's shards, allocated, not yet filled
        set_model_state_dict(model, dict(whole) if self.is_main else {},  # a copy: torch edits the dict it gets
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if self.is_main:
                    buffer.copy_(buffers[name])
                dist.broadcast(buffer, src=0)
        return model

    def reshard(self, model: torch.nn.Module) -> None:
        """FSDP2 keeps the root's parameters gathered after a forward with no backward (e.g. the
        baseline evaluation's generation): shard them again, so methods set up on DTensors."""
        if self.sharded:
            from torch.distributed.fsdp import FSDPModule

            for module in model.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the task forward pass goes through: DDP when distributed, else the model
        (under FSDP the model itself, already sharded by `shard_model`)."""
        if not self.enabled or self.sharded:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mirrored(self) -> bool:
        """Does this rank run model passes that rank 0 needs (probes, evaluation)? Only under FSDP."""
        return self.is_main or self.sharded

    def agree(self, value):
        """Rank 0's `value` on every rank that runs model passes: under FSDP all of them must take
        the same branch (e.g. reuse a cached evaluation or run it); elsewhere rank 0 is alone."""
        return self.broadcast(value) if self.sharded else value

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- sharded tensors
def is_fsdp_model(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())  # (LoRA: inside peft's wrapper)


def is_sharded(tensor) -> bool:
    return isinstance(tensor, DTensor)


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (a view: in-place edits change the parameter), else itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a sharded tensor: every rank must call it)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def sum_over_shards(values: torch.Tensor, sharded: bool) -> torch.Tensor:
    """Per-shard partial sums -> the sums over the whole parameters (every rank gets them)."""
    if sharded and dist.is_initialized():
        dist.all_reduce(values)
    return values


def distribute_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out like `like` (sharded the same way), e.g. state loaded from a checkpoint."""
    if not isinstance(like, DTensor) or isinstance(full, DTensor):
        return full
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)


def gather_full(obj):
    """`obj` with every sharded tensor replaced by the whole tensor (collective; for checkpoints)."""
    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, dict):
        return {key: gather_full(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full(value) for value in obj)
    return obj
