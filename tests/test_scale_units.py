"""Unit checks of what changes with scale and hardware: the rendezvous port's range, the CUDA device a task
uses and the CUDA RNG a checkpoint carries (with a faked device count on a CPU machine)."""

from __future__ import annotations

import pytest

from ae_dist.dist.job import master_port


@pytest.mark.fast
def test_master_port_stays_below_the_ephemeral_range() -> None:
    ports = [master_port(str(job)) for job in range(0, 200_000, 7)] + [master_port(f"{job}_3") for job in range(500)]
    assert min(ports) >= 15000 and max(ports) < 32768, (min(ports), max(ports))
    assert len(set(ports)) > 10000  # spread over the range, not a few values


def fake_cuda(monkeypatch, devices: int) -> dict[int, object]:
    """torch.cuda as a task that sees ``devices`` devices would find it, on a CPU machine; each device's RNG
    state lands in the returned dict (an ordinal past the visible devices fails as in torch: IndexError)."""
    import torch
    import torch.cuda.random

    rng: dict[int, object] = {}

    def set_rng_state(state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= devices:
            raise IndexError("tuple index out of range")
        rng[index] = state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    return rng


@pytest.mark.fast
@pytest.mark.parametrize(("local_rank", "devices", "expected"), [(3, 1, 0), (5, 4, 1), (2, 8, 2)])
def test_the_cuda_device_is_the_local_rank_among_the_devices_the_task_sees(monkeypatch, local_rank, devices,
                                                                          expected) -> None:
    import torch

    from ae_dist.dist.group import pick_device

    fake_cuda(monkeypatch, devices)
    assert pick_device(local_rank, "auto") == torch.device("cuda", expected)


@pytest.mark.fast
def test_a_checkpoint_from_an_8_gpu_node_restores_its_cuda_rng_where_one_device_is_visible(monkeypatch) -> None:
    import torch

    from ae_dist.run.checkpoint import rng_state, set_rng_state

    saved = rng_state() | {"cuda": [torch.full((16,), float(i), dtype=torch.uint8) for i in range(8)]}
    rng = fake_cuda(monkeypatch, 1)
    set_rng_state(saved)  # the elastic and world-size-change cases: fewer devices than the writer had
    assert list(rng) == [0] and torch.equal(rng[0], saved["cuda"][0])
    rng.clear()
    set_rng_state(saved | {"cuda": saved["cuda"][3]})  # new checkpoints: the writer's own device
    assert torch.equal(rng[0], saved["cuda"][3])


@pytest.mark.fast
def test_deterministic_cuda_sets_deterministic_algorithms_and_the_cublas_workspace(monkeypatch) -> None:
    import torch

    from ae_dist.dist.group import set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    set_deterministic(torch.device("cpu"), True)  # nothing to do on the CPU
    assert "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ and not torch.are_deterministic_algorithms_enabled()
    try:
        set_deterministic(torch.device("cuda", 0), True)
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
