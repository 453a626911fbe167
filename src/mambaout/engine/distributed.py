"""torchrun awareness: process group set-up, rank-0-only side effects, and metric reduction."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def current() -> DistInfo:
    """The running process group as a ``DistInfo`` (one process when none is initialised), for functions that
    are called both inside a torchrun job and on their own, such as the dense evaluations."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    nccl = dist.get_backend() == "nccl"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                    device=torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu"))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum each number over all processes (returns the inputs unchanged when not distributed)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``t`` summed over all processes, on ``t``'s device (NCCL reduces on the GPU)."""
    if not info.enabled:
        return t
    out = t.to(info.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (any picklable value), in rank order; ``[obj]`` in a single process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers. DDP broadcasts them at the start of each training forward, so after the
    last one each rank's BatchNorm statistics hold its own batch; evaluating then would mix several models."""
    if info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_true(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any (a stop request must be acted on by all ranks at once)."""
    if not info.enabled:
        return bool(flag)
    return all_reduce_sum([float(bool(flag))], info)[0] > 0


def all_true(flag: bool, info: DistInfo) -> bool:
    return not any_true(not flag, info)


def rank0_logger(info: DistInfo, log_file):
    """A ``log(message)`` that prints and appends to ``log_file`` on rank 0 only."""
    def log(msg: str) -> None:
        if info.is_main:
            print(msg, flush=True)
            with open(log_file, "a") as f:
                f.write(msg + "\n")

    return log
