"""The training recipe: lr schedules, clipping, accumulation, EMA, validation with model-best.pt and
early stopping, denoising and variational models; each resumes bitwise and does not depend on the
world size."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch

from ae_dist import engine
from ae_dist.config import ModelConfig, OptimConfig, TrainConfig, check_world_size, load_config
from ae_dist.dist.preemption import EXIT_PREEMPTED
from ae_dist.errors import UsageError
from ae_dist.models import build_model
from ae_dist.recipe import noise, schedule
from ae_dist.recipe.ema import EMA
from ae_dist.recipe.selection import Selection
from ae_dist.recipe.step import Recipe, clip_gradients
from ae_dist.run import resume
from ae_dist.run.folder import RunDir
from tests.helpers.commands import TINY, clean_env, hook_env
from tests.helpers.interrupted import launch
from tests.helpers.processes import Job
from tests.helpers.run_files import metrics

EVERYTHING = ("data.val_fraction=0.2", "train.eval_every_steps=4", "train.early_stop_patience=3", "optim.schedule=cosine",
              "optim.warmup_steps=5", "optim.min_lr=1e-4", "optim.clip_grad_norm=0.5", "train.accumulate=2",
              "train.ema_decay=0.5", "train.threads=1", "wandb.mode=disabled")
# 18 steps per epoch (val_fraction 0.2); checkpoints at 10, 20, ...; validation every 4 steps. Each kill lands
# in epoch 2, after checkpoint 20, between two validation passes, inside the accumulation window of its step.
KINDS = {"dae": (("model.kind=dae", "optim.lr=0.07"), 22, 28), "vae": (("model.kind=vae", "optim.lr=0.05"), 26, 40)}


@pytest.mark.fast
def test_lr_is_the_formula_of_the_step() -> None:
    cfg = OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=10, min_lr=1e-4)
    assert schedule.lr_at(cfg, 1, 110) == pytest.approx(1e-3)
    assert schedule.lr_at(cfg, 10, 110) == pytest.approx(1e-2)
    assert schedule.lr_at(cfg, 60, 110) == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5)
    assert schedule.lr_at(cfg, 110, 110) == pytest.approx(1e-4)
    assert schedule.lr_at(cfg, 500, 110) == pytest.approx(1e-4)  # past the horizon (a larger train.max_steps)
    linear = OptimConfig(lr=1e-2, schedule="linear", min_lr=0.0)
    assert schedule.lr_at(linear, 25, 100) == pytest.approx(0.75e-2)
    assert schedule.lr_at(OptimConfig(), 7, 100) == 1e-3  # constant: the seed's lr, bit for bit


@pytest.mark.fast
def test_keyed_noise_is_the_same_for_each_sample_at_any_world_size() -> None:
    whole = noise.keyed_normal(3, 17, "dae", 8, torch.arange(8), (2, 2), torch.device("cpu"))
    for world in (2, 4):
        for rank in range(world):
            rows = torch.arange(8 // world) * world + rank  # EpochBatches.positions
            assert torch.equal(noise.keyed_normal(3, 17, "dae", 8, rows, (2, 2), torch.device("cpu")), whole[rows])
    assert not torch.equal(noise.keyed_normal(3, 18, "dae", 8, torch.arange(8), (2, 2), torch.device("cpu")), whole)


@pytest.mark.fast
def test_accumulated_micro_batches_give_the_whole_batch_step() -> None:
    images = torch.rand(16, 1, 28, 28)
    weights = []
    for parts in (1, 4):
        torch.manual_seed(0)
        model = build_model(ModelConfig())
        optimizer = engine.build_optimizer(model, OptimConfig(), torch.device("cpu"))
        recipe = Recipe(OptimConfig(clip_grad_norm=1.0), ModelConfig(kind="dae"), 0, parts, 100, 16, torch.arange(16))
        loss, applied = engine.train_step(model, images, optimizer, engine.FusedAdamStep(optimizer), TrainConfig(),
                                          recipe, 1)
        assert applied and "grad_norm" in recipe.logged
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert 0 < (weights[0] - weights[1]).abs().max() < 1e-6  # the float order of the sums only


@pytest.mark.fast
def test_global_batch_must_divide_by_world_size_times_accumulate() -> None:
    config = load_config(None, ["train.batch_size=64", "train.accumulate=16"])
    check_world_size(config, 4)
    with pytest.raises(UsageError) as err:
        check_world_size(config, 8)
    assert "train.accumulate 16" in str(err.value) and "multiple of 128" in str(err.value)


@pytest.mark.fast
def test_longer_epochs_need_consent_under_a_decaying_schedule_only() -> None:
    found = {"train.epochs": (3, 5), "train.accumulate": (1, 2)}
    assert resume.refused(found, {"optim": {"schedule": "constant"}}) == {}
    assert resume.refused(found, {"optim": {"schedule": "cosine"}}) == {"train.epochs": (3, 5)}
    keys = ("optim.schedule", "optim.warmup_steps", "optim.min_lr", "optim.clip_grad_norm", "train.ema_decay",
            "train.eval_every_steps", "train.early_stop_patience", "model.noise_std", "model.beta")
    assert set(resume.refused({key: (0, 1) for key in keys})) == set(keys)


@pytest.mark.fast
def test_bad_recipe_values_are_named() -> None:
    with pytest.raises(UsageError) as err:
        load_config(None, ["train.ema_decay=1", "train.early_stop_patience=2", "optim.min_lr=1", "train.accumulate=0"])
    text = "\n".join(err.value.lines())
    for key in ("train.ema_decay", "train.early_stop_patience", "optim.min_lr", "train.accumulate"):
        assert key in text


@pytest.mark.fast
def test_the_seeds_model_stays_and_a_vae_encodes_its_mean() -> None:
    ae = build_model(ModelConfig())
    assert sum(p.numel() for p in ae.parameters()) == 219_891 and next(iter(ae.state_dict())) == "encoder.0.weight"
    vae = build_model(ModelConfig(kind="vae")).eval()
    images = torch.rand(4, 1, 28, 28)
    mean, logvar = vae.moments(images)
    assert torch.equal(vae.encode(images), mean) and torch.equal(vae(images), vae.decode(mean))
    recon, _, _ = vae(images, torch.ones(4, 3))
    assert not torch.equal(recon, vae(images))


@pytest.mark.fast
def test_ema_is_the_moving_average_and_selection_counts_patience() -> None:
    model = torch.nn.Linear(2, 1)
    start = model.weight.detach().clone()
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.model.weight, start + 0.1)
    selection = Selection()
    assert [selection.observe(loss, step, 2) for step, loss in enumerate((3.0, 2.0, 2.5, 1.0, 1.5, 1.0), 1)] == \
        [True, True, False, True, False, False]
    assert selection.stopped_early and selection.best_step == 4 and Selection.from_list(selection.to_list()) == selection


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def stop_step(run_dir: Path) -> int:
    return next(r["step"] for r in metrics(run_dir) if r["kind"] == "val" and r["stopped_early"])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_killed_inside_an_accumulation_window_reruns_bitwise_with_every_option_on(kind: str, tmp_path: Path) -> None:
    extra, kill_at, stops_at = KINDS[kind]
    args = [*TINY, *EVERYTHING, *extra]
    whole = tmp_path / "whole"
    assert launch("whole", [*args, f"run.dir={whole}"], tmp_path, 1).returncode == 0
    assert stop_step(whole) == stops_at
    run_dir = tmp_path / "run"
    killed = launch("killed", [*args, f"run.dir={run_dir}"], tmp_path, 1,
                    env=hook_env(tmp_path, "kill_in_window", KILL_AT_STEP=str(kill_at)))
    assert killed.returncode == -signal.SIGKILL and f"killed inside step {kill_at}" in killed.stderr
    assert killed.checkpoints[-1] == "step_00000020.pt"
    rerun = launch("rerun", [*args, f"run.dir={run_dir}"], tmp_path, 1)
    assert rerun.returncode == 0 and "resumed from" in rerun.stdout, rerun.stderr[-2000:]
    assert f"stopped early at step {stops_at}" in rerun.stdout and stop_step(run_dir) == stops_at
    for name in ("model", "model_ema", "model_best"):
        ours, theirs = weights(getattr(RunDir(run_dir), name)), weights(getattr(RunDir(whole), name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    again = launch("again", [*args, f"run.dir={run_dir}"], tmp_path, 1)
    assert again.returncode == 0 and "run complete" in again.stdout  # an early stop is a completed run


def test_world_size_and_accumulation_give_the_same_weights_with_one_allreduce_per_step(tmp_path: Path) -> None:
    args = [*TINY, *EVERYTHING, "model.kind=dae", "train.early_stop_patience=0", "train.max_steps=8"]
    finals = {}
    for nproc, accumulate in ((1, 4), (2, 2), (4, 1)):
        run_dir, counts = tmp_path / f"w{nproc}", tmp_path / f"counts{nproc}"
        counts.mkdir()
        job = Job.start([*args, f"train.accumulate={accumulate}", f"run.dir={run_dir}"], tmp_path, nproc,
                        env=hook_env(tmp_path, "count_allreduce", ALLREDUCE_DIR=str(counts)))
        assert job.wait() == [0], job.output()[-3000:]
        finals[nproc] = weights(RunDir(run_dir).model)
        if nproc > 1:  # 8 optimizer steps: one gradient all-reduce each on every rank, whatever train.accumulate
            assert sorted((counts / f"rank{r}.txt").read_text() for r in range(nproc)) == ["8"] * nproc
    for nproc in (2, 4):
        assert max((finals[nproc][k] - finals[1][k]).abs().max().item() for k in finals[1]) < 1e-4


def formula(step: int, horizon: int) -> float:
    """cosine from 1e-3 to 1e-4 after 5 warmup steps, written out."""
    if step <= 5:
        return 1e-3 * step / 5
    return 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min((step - 5) / (horizon - 5), 1.0)))


@pytest.mark.parametrize("nproc", [1, 2])
def test_logged_lr_is_the_formula_across_a_requeue(nproc: int, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, "optim.schedule=cosine", "optim.warmup_steps=5", "optim.min_lr=1e-4", "train.threads=1",
            "wandb.mode=disabled", f"run.dir={run_dir}"]
    job = Job.start(args, tmp_path, nproc, srun_like=nproc > 1, env=clean_env(tmp_path))  # each rank as srun starts it
    job.wait_for_step(15)
    job.signal(signal.SIGTERM)  # what SLURM sends before a requeue
    assert job.wait() == [EXIT_PREEMPTED] * nproc, job.output()[-3000:]
    rerun = Job.start(args, tmp_path, nproc, srun_like=nproc > 1, env=clean_env(tmp_path), name="rerun")
    assert rerun.wait() == [0] * nproc, rerun.output()[-3000:]
    assert "resumed from" in rerun.stdout()
    records = [r for r in metrics(run_dir) if r["kind"] == "train"]
    horizon = 3 * 23  # TINY: 3 epochs of 23 steps
    assert {r["step"] for r in records} >= {5, 10, 15, 20, 25, 50, 65}
    for record in records:
        assert record["lr"] == pytest.approx(formula(record["step"], horizon), rel=1e-12), record


@pytest.mark.fast
def test_evaluate_picks_the_ema_or_best_weights_and_says_when_there_are_none(tmp_path: Path, capsys) -> None:
    from ae_dist import evaluate
    from ae_dist.config import dump_yaml
    from ae_dist.run.checkpoint import write_atomic

    folder = RunDir(tmp_path)
    folder.config.write_text(dump_yaml(load_config(None, ["data.name=digits"])), encoding="utf-8")
    model = build_model(ModelConfig())
    write_atomic(folder.model_best, model.state_dict())
    model, _, source = evaluate.load_run_model(tmp_path, weights="best")
    assert source.startswith("model-best.pt")
    assert evaluate.main([str(tmp_path), "--weights", "ema"]) == 2
    assert "model-ema.pt missing" in capsys.readouterr().err


@pytest.mark.fast
def test_clipping_is_bitwise_torch_clip_grad_norm() -> None:
    """Norms from 1e-4 to 1e3 against max norms from 1e-2 to 1e2: clipped or left alone, the same bits as torch's."""
    generator, clipped = torch.Generator().manual_seed(0), 0
    for _ in range(400):
        shapes = [(int(torch.randint(1, 50, (1,), generator=generator)),) for _ in range(5)]
        scale = 10 ** float(torch.empty(1).uniform_(-4, 3, generator=generator))
        max_norm = 10 ** float(torch.empty(1).uniform_(-2, 2, generator=generator))
        ours = [torch.randn(shape, generator=generator) * scale for shape in shapes]
        params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
        for param, grad in zip(params, ours):
            param.grad = grad.clone()
        theirs = torch.nn.utils.clip_grad_norm_(params, max_norm)
        assert torch.equal(clip_gradients(ours, max_norm), theirs)
        assert all(torch.equal(param.grad, grad) for param, grad in zip(params, ours))
        clipped += float(theirs) > max_norm
    assert 100 < clipped < 300  # both paths taken
