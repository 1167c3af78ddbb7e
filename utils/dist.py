"""torchrun helpers: one process per device, NCCL on CUDA, gloo on CPU."""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def cuda_placement(local_rank, local_world, num_gpus):
    """(device index, backend) of a process: processes beyond the GPU count share GPUs round-robin, and then gloo,
    since NCCL refuses two ranks on one GPU (a 2-process run on a 1-GPU machine tests DDP before a multi-GPU one)."""
    if num_gpus < 1:
        raise RuntimeError("CUDA requested but no GPU is visible")
    return local_rank % num_gpus, ("nccl" if local_world <= num_gpus else "gloo")


def init_distributed(device="auto"):
    """Initialise the process group when launched by torchrun; otherwise a single process.

    device: "auto" (CUDA if available), "cpu" or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if use_cuda:
        index, backend = cuda_placement(local, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count())
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # long timeout: rank 0 may build a latent cache (minutes to hours) while the others wait at a barrier
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=6))
    return DistInfo(rank, world, local, dev)


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
