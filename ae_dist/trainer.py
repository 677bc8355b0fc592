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

from ae_dist import baseline, data, engine, validation
from ae_dist.build import Training, build, check_split_sizes, load_data, recipe_of, wrap
from ae_dist.config import Config, check_world_size, resolve_paths, to_dict
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
from ae_dist.run import completion
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
    config = resolve_paths(config)  # run.dir=~/runs/x: below $HOME, the run.dir template too
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
            if info.backend == "nccl" and not completion.reached(config.train, training.state.epoch, training.state.step,
                                                                  training.selection.stopped_early):
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
    if completion.reached(cfg.train, state.epoch, state.step, t.selection.stopped_early):
        stop.phase = FINISHING
        t.say(f"run complete: {t.run_dir.root} (step {state.step})")
        if info.is_main and not completion.is_complete(t.run_dir, cfg.train):  # stopped during its wrap-up
            finish(t)
            completion.write(t.run_dir, cfg.train, state.epoch, state.step, t.selection.stopped_early)
        return RunResult("completed", t.run_dir.root, state.step)
    model = wrap(t.model, cfg, info)
    batches = data.EpochBatches(t.train_split, cfg.train.batch_size, info.rank, info.world_size, cfg.train.seed,
                                info.device)
    t.say(f"global batch {cfg.train.batch_size} = {info.world_size} rank(s) x {batches.local_batch}; "
          f"{len(batches)} steps per epoch, {cfg.train.epochs} epochs")
    optimizer_step, recipe = engine.FusedAdamStep(t.optimizer), recipe_of(cfg, batches, t.ema)
    rank_clock = ranks.RankClock(model, info)  # per-rank step times, in the sync after each logging step
    sync = StepSync(info, stop, rank_clock, cfg.train.log_every)  # the loop's one collective, every few steps
    if info.is_main:  # this start in run.json: the command as launched, every rank's host, the code's version
        record_launch(t.run_dir, rank_clock.hosts, Job.from_env().id)
    # PCA at the latent size, the run's yardstick: rank 0 alone (the others wait for it at the first step's all-reduce,
    # under 2 s for 60k images; a resume reads it from the run folder)
    base = baseline.for_run(cfg, t.run_dir, t.train_split, t.test_split) if info.is_main else None
    monitor = open_monitor(t, rank_clock.hosts, base)
    progress = Progress(cfg.run.progress, cfg.train.epochs * len(batches), info.is_main, cfg.train.log_every)
    progress.start_at(state.step)
    stopped_by = 0  # the signal number that stopped the run, agreed by every rank
    try:
        stop.phase, at_max, early = TRAINING, False, False  # from here a stop signal: checkpoint at the next step boundary
        while not completion.reached(cfg.train, state.epoch, state.step, t.selection.stopped_early):
            model.train()
            trained, started = 0, time.perf_counter()
            for images in batches.epoch(state.epoch, start=state.batch):
                loss, applied = engine.train_step(model, images, t.optimizer, optimizer_step, cfg.train, recipe,
                                                  state.step + 1)
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
                                 "lr": t.optimizer.param_groups[0]["lr"], "world_size": info.world_size,
                                 **logged_terms(recipe)})
                progress.update(state.step, state.epoch + 1, shown)
                stopped_by = agreed.stop
                at_max = bool(cfg.train.max_steps) and state.step >= cfg.train.max_steps
                early = validation.due(t, state.step, epoch_end=False) and validation.validate(t, monitor)
                if t.checkpointer.due(state.step) or stopped_by or at_max or early:
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
                if early:
                    break
            if at_max or stopped_by or early:
                break
            rank_clock.pause()
            sync.fold(state, state.step)
            elapsed = time.perf_counter() - started
            end_epoch(t, monitor, trained * batches.local_batch * info.world_size / max(elapsed, 1e-9), base)
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
            completion.write(t.run_dir, cfg.train, state.epoch, state.step, t.selection.stopped_early)  # the wrap-up has finished
    finally:
        stop.phase = FINISHING
        rank_clock.pause()
        progress.close()
        monitor.close()
    if stopped_by:
        return RunResult("preempted", t.run_dir.root, state.step, stopped_by)
    return RunResult("completed", t.run_dir.root, state.step)


def logged_terms(recipe) -> dict[str, float]:
    """The newest step's extra terms (grad_norm; the VAE's recon and kl), read at logging steps only."""
    return {name: float(value) for name, value in recipe.logged.items()}


def open_monitor(t: Training, hosts: list[str], base: baseline.Baseline | None) -> Monitor | NullMonitor:
    if not t.info.is_main:
        return NullMonitor()
    if not t.state.wandb_run_id:
        t.state.wandb_run_id = wandb_run_id(t.run_dir.root)
    return Monitor(t.run_dir, t.config.wandb, t.state.wandb_run_id, to_dict(t.config), t.config.train.epochs, hosts,
                   base.name if base else "")


def end_epoch(t: Training, monitor: Monitor | NullMonitor, samples_per_s: float, base: baseline.Baseline | None) -> None:
    """Test loss (beside the baseline's, on rank 0), the epoch record, pictures every wandb.images_every_epochs,
    a checkpoint."""
    cfg, state = t.config, t.state
    train_loss = state.epoch_loss_sum / state.epoch_loss_count if state.epoch_loss_count else float("nan")
    test_loss = engine.evaluate(t.model, t.test_split, cfg.train.eval_batch_size, cfg.train, t.info)
    ema_loss = {} if t.ema is None else {
        "test_loss_ema": engine.evaluate(t.ema.model, t.test_split, cfg.train.eval_batch_size, cfg.train, t.info)}
    if validation.due(t, state.step, epoch_end=True):
        validation.validate(t, monitor)
    state.epoch, state.batch = state.epoch + 1, 0
    state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
    record = {"kind": "epoch", "step": state.step, "epoch": state.epoch, "train_loss": train_loss,
              "test_loss": test_loss, **ema_loss, "samples_per_s": samples_per_s, "lr": t.optimizer.param_groups[0]["lr"],
              "skipped_steps": state.skipped_steps, "world_size": t.info.world_size, **(base.fields(test_loss) if base else {})}
    every = cfg.wandb.images_every_epochs
    drawing = t.info.is_main and every and (state.epoch % every == 0 or state.epoch == cfg.train.epochs)
    monitor.log(record, draw_pictures(t) if drawing else {})
    monitor.epoch_line(record)
    t.checkpointer.save(t.model, t.optimizer, state)


def draw_pictures(t: Training) -> dict[str, Path]:
    model, split = t.model, t.test_split
    with torch.no_grad():
        model.eval()
        shown = split.images[:PICTURE_COUNT].to(t.info.device).float().div_(255)
        recon = model(shown)
    codes = engine.encode_all(model, split, t.config.train.eval_batch_size)
    title = f"epoch {t.state.epoch}, step {t.state.step}"
    paths = {"recon": t.run_dir.picture("recon"), "latent": t.run_dir.picture("latent")}
    plots.draw_reconstructions(shown, recon, paths["recon"], f"test images above reconstructions ({title})")
    plots.draw_latent(codes, split.labels, paths["latent"], f"test-set latent codes by class ({title})",
                      split.class_names(t.config.data.name))
    if t.config.model.kind == "vae":  # decoded draws from the prior N(0, 1), the same draws each time
        generator = torch.Generator().manual_seed(t.config.train.seed)
        with torch.no_grad():
            drawn = model.decode(torch.randn(2 * PICTURE_COUNT, model.latent_dim, generator=generator).to(shown.device))
        paths["samples"] = t.run_dir.picture("samples")
        plots.draw_samples(drawn, paths["samples"], f"decoded samples from the prior ({title})")
    return paths


def finish(t: Training) -> None:
    """Final weights (a plain state_dict, no wrapper prefixes; the EMA's in model-ema.pt), pictures, loss curve;
    last, whether the model beats the baseline."""
    write_atomic(t.run_dir.model, {k: v.detach().cpu() for k, v in t.model.state_dict().items()})
    if t.ema is not None:
        write_atomic(t.run_dir.model_ema, {k: v.detach().cpu() for k, v in t.ema.state_dict().items()})
    draw_pictures(t)
    records = read_metrics(t.run_dir.metrics)
    plots.draw_loss(records, t.run_dir.picture("loss"))
    t.say(f"done: {t.run_dir.root} (model.pt, recon.png, latent.png, loss.png, metrics.jsonl)")
    epochs, base = [r for r in records if r["kind"] == "epoch"], baseline.cached(t.config, t.run_dir)
    if epochs and base is not None:
        t.say(base.verdict(epochs[-1]["test_loss"]))


def dry_run(config: Config) -> int:
    """Load the data, build the model, take two steps on a copy of nothing: the run folder is not touched."""
    config = resolve_paths(config)
    check_world_size(config, int(read_env().get("WORLD_SIZE", "1")))
    with distributed(config.train.device, config.dist.timeout_s) as info:
        torch.manual_seed(config.train.seed)
        train_split, _, test_split = load_data(config, info)
        check_split_sizes(config, len(train_split))
        raw = build_model(config.model, train_split.shape).to(info.device)
        optimizer = engine.build_optimizer(raw, config.optim, info.device)
        model, step_optimizer = wrap(raw, config, info), engine.FusedAdamStep(optimizer)
        batches = data.EpochBatches(train_split, config.train.batch_size, info.rank, info.world_size, config.train.seed,
                                    info.device)
        recipe = recipe_of(config, batches)
        losses = [float(engine.train_step(model, images, optimizer, step_optimizer, config.train, recipe, step)[0].detach())
                  for images, step in zip(batches.epoch(0), (1, 2))]
        if info.is_main:
            print(f"dry run: {config.data.name} {len(train_split):,} train / {len(test_split):,} test images; "
                  f"{config.model.name} {sum(p.numel() for p in raw.parameters()):,} weights on {info.device}; "
                  f"global batch {config.train.batch_size} = {info.world_size} rank(s) x {batches.local_batch}, "
                  f"{len(batches)} steps per epoch; 2 steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
                  f"nothing written to {config.run.dir}", flush=True)
    return 0
