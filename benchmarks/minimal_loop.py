"""The shortest fast loop: tensor-resident data, fused Adam, nothing else. Under torchrun: plain DDP.

    python -m benchmarks.minimal_loop DATA_ROOT [--device cpu|cuda] [--batch 64] [--ftz]
    torchrun --standalone --nproc_per_node=2 -m benchmarks.minimal_loop DATA_ROOT

One process uses torch's default intra-op threads (this machine's cores); under torchrun
each rank has torchrun's OMP_NUM_THREADS=1 and wraps the model in
``DistributedDataParallel`` with its default options (gloo on CPU, nccl on CUDA); the
global batch is split across ranks. No logging, no checkpoints, no evaluation. ``--ftz``
flushes denormal floats to zero (``torch.set_flush_denormal``), as ae-dist does by default:
without it, once the sigmoid's outputs for background pixels underflow (late in the first
epoch on this data), every step takes several times longer.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ae_dist.models import MLPAutoencoder
from benchmarks.clock import StepClock, cuda_sync, env_int
from benchmarks.resident import ResidentBatches, load_train_images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--ftz", action="store_true", help="flush denormal floats to zero")
    args = parser.parse_args()
    if args.ftz:
        torch.set_flush_denormal(True)
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", "0"))) if args.device == "cuda" \
        else torch.device(args.device)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    clock = StepClock(global_batch=args.batch, sync=cuda_sync(args.device))
    budget = env_int("BENCH_STEPS", 937)
    batches = ResidentBatches(load_train_images(args.root, device), args.batch, rank, world_size)
    torch.manual_seed(0)
    model: torch.nn.Module = MLPAutoencoder().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5, fused=True)
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    while clock.steps < budget:
        for images in batches:
            loss = F.mse_loss(model(images), images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.tick()
            if clock.steps == budget:
                break
    clock.write(contender="minimal-ftz" if args.ftz else "minimal", threads=torch.get_num_threads(),
                world_size=world_size)
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
