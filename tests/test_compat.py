"""The private fused-Adam fast path (`ae_dist.engine.FusedAdamStep`) is used only where its
feature check passes; elsewhere the trainer steps with ``optimizer.step()`` and trains all the same.
The tests marked ``compat`` also run on the oldest and newest supported torch (.ci/compat.sh).

    .venv/bin/python -m pytest tests/test_compat.py -q
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from ae_dist import engine
from ae_dist.config import OptimConfig, TrainConfig
from ae_dist.models import MLPAutoencoder

FUSED_ON_CPU = "cpu" in _get_fused_kernels_supported_devices()  # torch 2.4 on
NO_FUSED_ON_CPU = f"torch {torch.__version__} has no fused Adam on the CPU"


@pytest.fixture
def fresh_check() -> Iterator[None]:
    """The check runs again inside the test, and again after it with the real op."""
    engine.fused_adam_kernel_matches.cache_clear()
    yield
    engine.fused_adam_kernel_matches.cache_clear()


@pytest.mark.fast
@pytest.mark.compat
@pytest.mark.skipif(not FUSED_ON_CPU, reason=NO_FUSED_ON_CPU)
def test_the_check_passes_wherever_this_torch_has_fused_adam_on_the_cpu(fresh_check) -> None:
    """A torch whose private op changed turns this red, not only slower (the bitwise test in
    tests/test_speed.py skips where the check fails)."""
    assert engine.fused_adam_kernel_matches("cpu")
    assert engine.FusedAdamStep(engine.build_optimizer(MLPAutoencoder(), OptimConfig(), torch.device("cpu"))).enabled


def refuses_our_call(*args, **kwargs) -> None:
    """A stand-in for a torch whose ``_fused_adam_`` takes other arguments."""
    raise TypeError("_fused_adam_() got an unexpected keyword argument 'beta1'")


@pytest.mark.fast
@pytest.mark.skipif(not FUSED_ON_CPU, reason=NO_FUSED_ON_CPU)
@pytest.mark.parametrize("stand_in", ["missing", "other_arguments"])
def test_the_check_fails_on_a_torch_without_the_op_or_with_other_arguments(stand_in: str, fresh_check, monkeypatch) -> None:
    if stand_in == "missing":
        monkeypatch.delattr(torch, "_fused_adam_")
    else:
        monkeypatch.setattr(torch, "_fused_adam_", refuses_our_call)
    assert not engine.fused_adam_kernel_matches("cpu")


@pytest.mark.fast
@pytest.mark.compat
def test_when_the_check_fails_every_step_is_optimizer_step_and_training_goes_on(monkeypatch) -> None:
    monkeypatch.setattr(engine, "fused_adam_kernel_matches", lambda device_type: False)
    torch.manual_seed(0)
    images = torch.rand(4, 16, 1, 28, 28)
    model = MLPAutoencoder()
    twin = copy.deepcopy(model)
    reference = engine.build_optimizer(model, OptimConfig(), torch.device("cpu"))
    optimizer = engine.build_optimizer(twin, OptimConfig(), torch.device("cpu"))
    step = engine.FusedAdamStep(optimizer)
    assert not step.enabled and bool(optimizer.defaults["fused"]) == FUSED_ON_CPU  # off even for a fused optimizer
    stepped = []
    monkeypatch.setattr(optimizer, "step", lambda: stepped.append(type(optimizer).step(optimizer)))
    losses = []
    for k in range(12):
        batch = images[k % len(images)]
        reference.zero_grad(set_to_none=True)
        F.mse_loss(model(batch), batch).backward()
        reference.step()
        loss, applied = engine.train_step(twin, batch, optimizer, step, TrainConfig())
        losses.append(loss.item())
        assert applied
    assert len(stepped) == 12  # every step went through optimizer.step()
    for a, b in zip([*model.parameters(), *reference.state_dict()["state"][0].values()],
                    [*twin.parameters(), *optimizer.state_dict()["state"][0].values()]):
        assert torch.equal(a, b)  # bitwise optimizer.step()
    assert sum(losses[-4:]) < sum(losses[:4])  # and it trains: the same four batches, a lower loss
