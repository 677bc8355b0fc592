"""The training loop and what it calls at its edges: `run` (every rank), `fit` (the loop), the
epoch's end, the final weights and pictures, and a dry run.

`ae_dist.build` makes what the loop needs; `ae_dist.engine` holds one step, the loss window and
the evaluation; `ae_dist.run.checkpoint.Checkpointer` owns when checkpoints are written. The command
line is `ae_dist.train`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ae_dist import data, engine
from ae_dist.build import Training, build, check_split_sizes, is_complete, load_data, wrap
from ae_dist.config import Config, check_world_size, to_dict
from ae_dist.dist.group import barrier, cpu_threads, distributed, nccl_flight_recorder, read_env, set_deterministic
from ae_dist.dist.job import Job
from ae_dist.dist.liveness import die_with_launcher
from ae_dist.dist.preemption import FINISHING, TRAINING, StopSignals, stopped_line
from ae_dist.errors import AeDistError, as_error
from ae_dist.models import build_model
from ae_dist.monitor import plots, ranks
from ae_dist.monitor.console import Progress
from ae_dist.monitor.monitor import Monitor, NullMonitor
from ae_dist.monitor.wandb_run import check_credentials
from ae_dist.run.agree import agree_run_dir
from ae_dist.run.checkpoint import write_atomic
from ae_dist.run.folder import RunDir, record_launch
from ae_dist.run.identity import wandb_run_id
from ae_dist.run.metrics import read_metrics
from ae_dist.sync import StepSync

PICTURE_COUNT = 10


@dataclass(frozen=True)
class RunResult:
    status: str  # "completed" | "preempted"
    run_dir: Path
    step: int
    signal: int = 0


def run(config: Config, stop: StopSignals | None = None) -> RunResult:
    """Train (or resume, or find complete) the run in ``config.run.dir``; every rank calls this.

    ``stop`` records stop signals (installed first thing by the caller; here otherwise). A
    project error raised once the ranks have started is marked with this rank, so the rank
    that failed says so (`ae_dist.errors.say`), unless every rank raised it alike.
    """
    stop = stop or StopSignals.install()
    env = read_env()
    check_world_size(config, int(env.get("WORLD_SIZE", "1")))  # before any rank waits for the others
    check_credentials(config.wandb)  # wandb.mode=online without credentials: exit 2 before any work
    die_with_launcher(env)
    torch.set_flush_denormal(config.train.flush_denormal)  # before any thread pool starts: its threads inherit it
    training = None
    try:
        with distributed(config.train.device, config.dist.timeout_s) as info:
            set_deterministic(info.device, config.train.deterministic)  # before the first cuBLAS call
            config = agree_run_dir(config, info)  # a run.dir template ({wandb_run_id}, {date}, {time}) made concrete
            if info.heartbeat is not None:  # a rank that goes silent from here on leaves every live rank's stacks there
                info.heartbeat.incidents_dir = RunDir(Path(config.run.dir)).incidents
            if info.device.type == "cpu":
                torch.set_num_threads(cpu_threads(info.local_world_size, config.train.threads))
            training = build(config, info)
            if info.backend == "nccl" and not is_complete(config, training.state.epoch, training.state.step):
                # NCCL's flight-recorder dumps beside the stacks (ae_dist.dist.group)
                nccl_flight_recorder(training.run_dir.incidents)
            return fit(training, stop)
    except (AeDistError, OSError) as err:
        known = as_error(err, config.run.dir)
        if known is None:
            raise
        if not known.all_ranks_alike:
            known.rank = int(env.get("RANK", "0"))
        raise known from None
    finally:
        if training is not None and training.lease is not None:
            training.lease.release()


def fit(t: Training, stop: StopSignals) -> RunResult:
    """The training loop: steps, logging, checkpoints, stop requests and epoch ends, in this order."""
    cfg, state, info = t.config, t.state, t.info
    if is_complete(cfg, state.epoch, state.step):
        stop.phase = FINISHING
        t.say(f"run complete: {t.run_dir.root} (step {state.step})")
        if info.is_main and not t.run_dir.model.exists():
            finish(t)
        return RunResult("completed", t.run_dir.root, state.step)
    model = wrap(t.model, cfg, info)
    batches = data.EpochBatches(t.train_split, cfg.train.batch_size, info.rank, info.world_size, cfg.train.seed)
    t.say(f"global batch {cfg.train.batch_size} = {info.world_size} rank(s) x {batches.local_batch}; "
          f"{len(batches)} steps per epoch, {cfg.train.epochs} epochs")
    optimizer_step = engine.FusedAdamStep(t.optimizer)
    rank_clock = ranks.RankClock(model, info)  # per-rank step times, in the sync after each logging step
    sync = StepSync(info, stop, rank_clock, cfg.train.log_every)  # the loop's one collective, every few steps
    if info.is_main:  # this start in run.json: the command as launched, every rank's host, the code's version
        record_launch(t.run_dir, rank_clock.hosts, Job.from_env().id)
    monitor = open_monitor(t, rank_clock.hosts)
    progress = Progress(cfg.run.progress, cfg.train.epochs * len(batches), info.is_main, cfg.train.log_every)
    progress.start_at(state.step)
    stopped_by = 0  # the signal number that stopped the run, agreed by every rank
    try:
        stop.phase, at_max = TRAINING, False  # from here a stop signal means: checkpoint at the next step boundary
        while not is_complete(cfg, state.epoch, state.step):
            model.train()
            trained, started = 0, time.perf_counter()
            for images in batches.epoch(state.epoch, start=state.batch):
                loss, applied = engine.train_step(model, images, t.optimizer, optimizer_step, cfg.train)
                state.batch += 1
                state.step += 1
                if applied:
                    sync.add(loss, state.step)
                    trained += 1
                else:
                    state.skipped_steps += 1
                agreed = sync.step_done(state.step)  # a stop, a lost lease, a NaN loss: every rank at the same step
                monitor.log_ranks(agreed.rank_times)
                shown = float(loss.detach()) if state.step % cfg.train.log_every == 0 else None  # the one host sync
                if shown is not None and sync.loggable():  # nothing logged past a NaN loss (nan_policy=stop)
                    monitor.log({"kind": "train", "step": state.step, "epoch": state.epoch + 1, "loss": shown,
                                 "lr": t.optimizer.param_groups[0]["lr"], "world_size": info.world_size})
                progress.update(state.step, state.epoch + 1, shown)
                stopped_by = agreed.stop
                at_max = bool(cfg.train.max_steps) and state.step >= cfg.train.max_steps
                if t.checkpointer.due(state.step) or stopped_by or at_max:
                    sync.fold(state, state.step)
                    t.checkpointer.save(t.model, t.optimizer, state)
                rank_clock.step_done(state.batch)
                if stopped_by:
                    t.say(stopped_line(stopped_by, state.step))
                    break
                if at_max:
                    t.say(f"reached train.max_steps={cfg.train.max_steps} at step {state.step}, "
                          f"in epoch {state.epoch + 1}; a larger train.max_steps continues the run")
                    break
            if at_max or stopped_by:
                break
            rank_clock.pause()
            sync.fold(state, state.step)
            elapsed = time.perf_counter() - started
            end_epoch(t, monitor, trained * batches.local_batch * info.world_size / max(elapsed, 1e-9))
        stop.phase = FINISHING  # from here a stop signal changes nothing: the wrap-up finishes
        rank_clock.pause()
        progress.close()
        if info.is_main and not stopped_by:
            finish(t)
        # Every rank waits for rank 0's final weights and pictures, then is done: W&B's finish and
        # artifact uploads (longer than dist.timeout_s, at times) follow on rank 0 alone.
        barrier(info)
        if info.is_main and not stopped_by:
            monitor.log_model(t.run_dir.model, state.step, state.epoch)  # before W&B closes
    finally:
        stop.phase = FINISHING
        rank_clock.pause()
        progress.close()
        monitor.close()
    if stopped_by:
        return RunResult("preempted", t.run_dir.root, state.step, stopped_by)
    return RunResult("completed", t.run_dir.root, state.step)


def open_monitor(t: Training, hosts: list[str]) -> Monitor | NullMonitor:
    if not t.info.is_main:
        return NullMonitor()
    if not t.state.wandb_run_id:
        t.state.wandb_run_id = wandb_run_id(t.run_dir.root)
    return Monitor(t.run_dir, t.config.wandb, t.state.wandb_run_id, to_dict(t.config), t.config.train.epochs, hosts)


def end_epoch(t: Training, monitor: Monitor | NullMonitor, samples_per_s: float) -> None:
    """Test loss, the epoch record, pictures every wandb.images_every_epochs, a checkpoint."""
    cfg, state = t.config, t.state
    train_loss = state.epoch_loss_sum / state.epoch_loss_count if state.epoch_loss_count else float("nan")
    test_loss = engine.evaluate(t.model, t.test_split, cfg.train.eval_batch_size, cfg.train, t.info)
    state.epoch, state.batch = state.epoch + 1, 0
    state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
    record = {"kind": "epoch", "step": state.step, "epoch": state.epoch, "train_loss": train_loss,
              "test_loss": test_loss, "samples_per_s": samples_per_s, "lr": t.optimizer.param_groups[0]["lr"],
              "skipped_steps": state.skipped_steps, "world_size": t.info.world_size}
    every = cfg.wandb.images_every_epochs
    drawing = t.info.is_main and every and (state.epoch % every == 0 or state.epoch == cfg.train.epochs)
    monitor.log(record, draw_pictures(t) if drawing else {})
    monitor.epoch_line(record)
    t.checkpointer.save(t.model, t.optimizer, state)


def draw_pictures(t: Training) -> dict[str, Path]:
    model, split = t.model, t.test_split
    with torch.no_grad():
        model.eval()
        shown = split.images[:PICTURE_COUNT].float().div_(255)
        recon = model(shown)
    codes = engine.encode_all(model, split, t.config.train.eval_batch_size)
    title = f"epoch {t.state.epoch}, step {t.state.step}"
    paths = {"recon": t.run_dir.picture("recon"), "latent": t.run_dir.picture("latent")}
    plots.draw_reconstructions(shown, recon, paths["recon"], f"test images above reconstructions ({title})")
    plots.draw_latent(codes, split.labels, paths["latent"], f"test-set latent codes by class ({title})",
                      data.CLASS_NAMES.get(t.config.data.name))
    return paths


def finish(t: Training) -> None:
    """Final weights (a plain state_dict, no wrapper prefixes), pictures, loss curve."""
    write_atomic(t.run_dir.model, {k: v.detach().cpu() for k, v in t.model.state_dict().items()})
    draw_pictures(t)
    plots.draw_loss(read_metrics(t.run_dir.metrics), t.run_dir.picture("loss"))
    t.say(f"done: {t.run_dir.root} (model.pt, recon.png, latent.png, loss.png, metrics.jsonl)")


def dry_run(config: Config) -> int:
    """Load the data, build the model, take two steps on a copy of nothing: the run folder is not touched."""
    check_world_size(config, int(read_env().get("WORLD_SIZE", "1")))
    with distributed(config.train.device, config.dist.timeout_s) as info:
        torch.manual_seed(config.train.seed)
        train_split, test_split = load_data(config, info)
        check_split_sizes(config, len(train_split))
        raw = build_model(config.model).to(info.device)
        optimizer = engine.build_optimizer(raw, config.optim, info.device)
        model, step_optimizer = wrap(raw, config, info), engine.FusedAdamStep(optimizer)
        batches = data.EpochBatches(train_split, config.train.batch_size, info.rank, info.world_size, config.train.seed)
        losses = [float(engine.train_step(model, images, optimizer, step_optimizer, config.train)[0].detach())
                  for images, _ in zip(batches.epoch(0), range(2))]
        if info.is_main:
            print(f"dry run: {config.data.name} {len(train_split):,} train / {len(test_split):,} test images; "
                  f"{config.model.name} {sum(p.numel() for p in raw.parameters()):,} weights on {info.device}; "
                  f"global batch {config.train.batch_size} = {info.world_size} rank(s) x {batches.local_batch}, "
                  f"{len(batches)} steps per epoch; 2 steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
                  f"nothing written to {config.run.dir}", flush=True)
    return 0
