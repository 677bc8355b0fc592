"""The hot path's speed options keep the numbers: fused Adam fast path, loss window, batch gather, benchmarks."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from ae_dist import engine
from ae_dist.config import OptimConfig
from ae_dist.data import EpochBatches, Split, synthetic_split
from ae_dist.dist.group import DistInfo
from ae_dist.errors import Diverged
from ae_dist.models import MLPAutoencoder
from benchmarks.idx_files import write_fashion_mnist
from tests.helpers.commands import REPO, clean_env

CPU_ONLY = DistInfo(0, 0, 1, 1, torch.device("cpu"), None)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step, images: torch.Tensor, steps: int) -> None:
    for k in range(steps):
        batch = images[k % len(images)]
        loss = F.mse_loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step()


def _state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for s in optimizer.state.values() for t in s.values()]


@pytest.mark.fast
@pytest.mark.compat
@pytest.mark.skipif(not engine.fused_adam_kernel_matches("cpu"), reason="no fast path on this torch: see tests/test_compat.py")
def test_fused_adam_fast_path_is_bitwise_optimizer_step_through_a_resume_and_an_lr_change() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 16, 1, 28, 28)
    model = MLPAutoencoder()
    twin = copy.deepcopy(model)
    reference = engine.build_optimizer(model, OptimConfig(), torch.device("cpu"))
    fast = engine.build_optimizer(twin, OptimConfig(), torch.device("cpu"))
    assert reference.defaults["fused"] and engine.FusedAdamStep(fast).enabled  # auto = fused on the CPU
    _train(model, reference, reference.step, images, 5)
    _train(twin, fast, engine.FusedAdamStep(fast), images, 5)  # the first call initializes state via step()
    # A resume: a fresh optimizer loads the saved state, then both go on with another lr.
    resumed = engine.build_optimizer(twin, OptimConfig(), torch.device("cpu"))
    resumed.load_state_dict(copy.deepcopy(fast.state_dict()))
    for group in (*reference.param_groups, *resumed.param_groups):
        group["lr"] = 3e-4
    _train(model, reference, reference.step, images, 7)
    _train(twin, resumed, engine.FusedAdamStep(resumed), images, 7)
    for a, b in zip([*model.parameters(), *_state(reference)], [*twin.parameters(), *_state(resumed)]):
        assert torch.equal(a, b)
    assert not torch.equal(next(model.parameters()), next(MLPAutoencoder().parameters()))


@pytest.mark.fast
@pytest.mark.parametrize("options", [{"foreach": True}, {"fused": True, "amsgrad": True}])
def test_fused_adam_fast_path_steps_aside_for_what_it_does_not_cover(options: dict) -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 8, 1, 28, 28)
    model = MLPAutoencoder()
    twin = copy.deepcopy(model)
    reference = torch.optim.Adam(model.parameters(), lr=1e-3, **options)
    other = torch.optim.Adam(twin.parameters(), lr=1e-3, **options)
    assert not engine.FusedAdamStep(other).enabled
    _train(model, reference, reference.step, images, 3)
    _train(twin, other, engine.FusedAdamStep(other), images, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


@pytest.mark.fast
def test_fused_adam_fast_path_leaves_a_parameter_without_gradient_to_step() -> None:
    model = MLPAutoencoder()
    optimizer = engine.build_optimizer(model, OptimConfig(), torch.device("cpu"))
    frozen = model.encoder[0].weight
    before = frozen.detach().clone()
    images = torch.rand(1, 8, 1, 28, 28)
    _train(model, optimizer, engine.FusedAdamStep(optimizer), images, 2)
    frozen.grad = None
    optimizer.step = lambda: setattr(optimizer, "took_step", True)  # the fallback is optimizer.step()
    engine.FusedAdamStep(optimizer)()
    assert getattr(optimizer, "took_step", False) and not torch.equal(frozen, before)


@pytest.mark.fast
def test_the_step_sync_sums_the_loss_and_names_the_first_non_finite_step() -> None:
    from ae_dist.dist.preemption import StopSignals
    from ae_dist.monitor.ranks import RankClock
    from ae_dist.run.checkpoint import TrainState
    from ae_dist.sync import StepSync

    sync = StepSync(CPU_ONLY, StopSignals(), RankClock(torch.nn.Linear(1, 1), CPU_ONLY), log_every=2)
    state = TrainState()
    for step, value in enumerate([0.5, 0.25, 0.125], start=1):
        sync.add(torch.tensor(value, requires_grad=True) * 1, step)
        sync.step_done(step)
    sync.fold(state, 3)
    assert (state.epoch_loss_sum, state.epoch_loss_count) == (0.875, 3) and sync.loggable()
    with pytest.raises(Diverged) as raised:
        for step, value in [(4, 1.0), (5, float("nan")), (6, float("inf"))]:
            sync.add(torch.tensor(value), step)
            sync.step_done(step)
        sync.fold(state, 6)
    assert raised.value.step == 5


@pytest.mark.fast
@pytest.mark.parametrize("world_size", [1, 2])
def test_batches_are_the_images_at_the_sampler_indices(world_size: int) -> None:
    split = synthetic_split(300, seed=3)
    for rank in range(world_size):
        batches = EpochBatches(split, 32, rank, world_size, seed=1)
        sampler = DistributedSampler(range(len(split)), num_replicas=world_size, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(2)
        order = torch.tensor(list(sampler))[: len(batches) * batches.local_batch].view(len(batches), -1)
        got = list(batches.epoch(2, start=3))
        assert len(got) == len(batches) - 3
        for k, batch in enumerate(got, start=3):
            assert batch.shape == (32 // world_size, 1, 28, 28) and batch.dtype == torch.float32
            assert torch.equal(batch, split.images[order[k]].float().div_(255))
    odd = Split(torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1), torch.zeros(40, dtype=torch.int64))
    assert next(EpochBatches(odd, 8, 0, 1, seed=0).epoch(0)).shape == (8, 1, 1, 1)


@pytest.mark.fast
def test_benchmark_idx_files_read_back_through_torchvision(tmp_path) -> None:
    """benchmarks/throughput.py writes its data with benchmarks.idx_files; torchvision reads it as written."""
    from torchvision import datasets

    write_fashion_mnist(tmp_path, train=5, test=3)
    read = datasets.FashionMNIST(str(tmp_path), train=True, download=False)
    assert torch.equal(read.data, synthetic_split(5, seed=0).images.squeeze(1)) and read.targets.tolist() == [0, 1, 2, 3, 4]
    assert len(datasets.FashionMNIST(str(tmp_path), train=False, download=False)) == 3


@pytest.mark.slow
def test_throughput_benchmark_runs_and_prints_its_table(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--rounds", "1", "--steps", "30",
                           "--warmup", "10", "--only", "ae-dist,minimal", "--threads", "1", "--workdir", str(tmp_path)],
                          cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "ae-dist, 1 process" in done.stdout and "minimal hand-written loop" in done.stdout
    assert re.search(r"ae-dist / minimal +\d+\.\d+x", done.stdout), done.stdout[-2000:]
    assert (tmp_path / "runs" / "ae-dist-0" / "model.pt").exists()
