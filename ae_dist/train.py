"""Train an autoencoder: one process, torchrun, srun or a submitit job, unchanged.

    python -m ae_dist.train --config configs/digits.yaml run.dir=runs/digits
    torchrun --nproc_per_node=2 -m ae_dist.train --config configs/digits.yaml run.dir=runs/digits
    python -m ae_dist.train --help          # every config key, its default and meaning

Running the same command again with the same run.dir resumes from the newest complete
checkpoint, or says the run is complete. Exit status: 0 done, 2 bad input, 75 stopped
by a signal after writing a checkpoint (run the same command again to continue), 1 other
failures (a diverged loss, a rank that stopped answering, a full disk), each said in one
`error:` line. Under torchrun each worker exits with these; torchrun itself exits 1 for any
non-zero worker (its report lists `exitcode : 75` per rank) or when SIGTERM reaches torchrun
itself, and with --max-restarts it starts the workers again, which resume from the newest checkpoint.

The whole training loop is `fit`; `ae_dist.build` makes what it needs, `ae_dist.engine`
holds the step, the loss window and the evaluation.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ae_dist import data, engine, plots, ranks
from ae_dist.build import Training, build, wrap
from ae_dist.checkpoint import write_atomic
from ae_dist.config import Config, check_world_size, help_text, load_config, to_dict
from ae_dist.console import Progress
from ae_dist.dist import barrier, cpu_threads, distributed, read_env
from ae_dist.errors import EXIT_PREEMPTED, AeDistError, as_error, reporting
from ae_dist.metrics import read_metrics
from ae_dist.monitor import Monitor, NullMonitor
from ae_dist.preemption import StopSignals
from ae_dist.run_dir import agree_run_dir, wandb_run_id
from ae_dist.wandb_run import check_credentials

PICTURE_COUNT = 10
TEST_HOOK = "AE_DIST_TEST_HOOK"  # a module imported at start that may change behaviour (tests only)


@dataclass(frozen=True)
class RunResult:
    status: str  # "completed" | "preempted"
    run_dir: Path
    step: int
    signal: int = 0


def run(config: Config) -> RunResult:
    """Train (or resume, or find complete) the run in ``config.run.dir``; every rank calls this.

    A project error raised once the ranks have started is marked with this rank, so the
    rank that failed says so (`ae_dist.errors.say`).
    """
    world_size = int(read_env().get("WORLD_SIZE", "1"))
    check_world_size(config, world_size)  # before any rank waits for the others
    check_credentials(config.wandb)  # wandb.mode=online without credentials: exit 2 before any work
    torch.set_flush_denormal(config.train.flush_denormal)  # before any thread pool starts: its threads inherit it
    try:
        with distributed(config.train.device, config.dist.timeout_s) as info:
            config = agree_run_dir(config, info)  # a run.dir template ({wandb_run_id}, {date}, {time}) made concrete
            if info.device.type == "cpu":
                torch.set_num_threads(cpu_threads(info.local_world_size, config.train.threads))
            training = build(config, info)
            return fit(training)
    except (AeDistError, OSError) as err:
        known = as_error(err, config.run.dir)
        if known is None:
            raise
        known.rank = int(read_env().get("RANK", "0"))
        raise known from None


def fit(t: Training) -> RunResult:
    """The training loop: steps, logging, checkpoints, stop requests and epoch ends, in this order."""
    cfg, state, info = t.config, t.state, t.info
    if state.epoch >= cfg.train.epochs:
        t.say(f"run complete: {t.run_dir.root} (step {state.step})")
        if info.is_main and not t.run_dir.model.exists():
            finish(t)
        return RunResult("completed", t.run_dir.root, state.step)
    model = wrap(t.model, cfg, info)
    batches = data.EpochBatches(t.train_split, cfg.train.batch_size, info.rank, info.world_size, cfg.train.seed)
    t.say(f"global batch {cfg.train.batch_size} = {info.world_size} rank(s) x {batches.local_batch}; "
          f"{len(batches)} steps per epoch, {cfg.train.epochs} epochs")
    optimizer_step = engine.FusedAdamStep(t.optimizer)
    rank_clock = ranks.RankClock(model, info)  # per-rank step times, gathered at logging steps
    monitor = open_monitor(t, rank_clock.hosts)
    progress = Progress(cfg.run.progress, cfg.train.epochs * len(batches), info.is_main, cfg.train.log_every)
    progress.start_at(state.step)
    try:
        with StopSignals(info) as stop:
            while state.epoch < cfg.train.epochs:
                model.train()
                window, trained, started = engine.LossWindow(info.device), 0, time.perf_counter()
                for images in batches.epoch(state.epoch, start=state.batch):
                    loss, applied = engine.train_step(model, images, t.optimizer, optimizer_step, cfg.train)
                    state.batch += 1
                    state.step += 1
                    if applied:
                        window.add(loss, state.step)
                        trained += 1
                    else:
                        state.skipped_steps += 1
                    logging = state.step % cfg.train.log_every == 0
                    if logging:
                        window.check(info)
                        monitor.log_ranks(rank_clock.gather(state.step))
                        monitor.log({"kind": "train", "step": state.step, "epoch": state.epoch + 1,
                                     "loss": float(loss.detach()), "lr": t.optimizer.param_groups[0]["lr"]})
                    progress.update(state.step, state.epoch + 1, float(loss.detach()) if logging else None)
                    stopped_by = stop.should_stop(state.step)
                    if t.checkpointer.due(state.step) or stopped_by:
                        window.fold(state, info)
                        t.checkpointer.save(t.model, t.optimizer, state)
                    rank_clock.step_done(state.batch)
                    if stopped_by:
                        t.say(f"stopped by signal {stopped_by} at step {state.step}; checkpoint written, "
                              "run the same command to continue")
                        return RunResult("preempted", t.run_dir.root, state.step, stopped_by)
                window.fold(state, info)
                elapsed = time.perf_counter() - started
                end_epoch(t, monitor, trained * batches.local_batch * info.world_size / max(elapsed, 1e-9))
        progress.close()
        if info.is_main:
            finish(t)
            monitor.log_model(t.run_dir.model, state.step, state.epoch)
    finally:
        progress.close()
        monitor.close()
    barrier(info)
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
              "skipped_steps": state.skipped_steps}
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
    plots.draw_latent(codes, split.labels, paths["latent"], f"test-set latent codes by class ({title})")
    return paths


def finish(t: Training) -> None:
    """Final weights (a plain state_dict, no wrapper prefixes), pictures, loss curve."""
    write_atomic(t.run_dir.model, {k: v.detach().cpu() for k, v in t.model.state_dict().items()})
    draw_pictures(t)
    plots.draw_loss(read_metrics(t.run_dir.metrics), t.run_dir.picture("loss"))
    t.say(f"done: {t.run_dir.root} (model.pt, recon.png, latent.png, loss.png, metrics.jsonl)")


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m ae_dist.train", description="Train an autoencoder (CPU, torchrun, srun or submitit).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_text())
    parser.add_argument("--config", help="YAML experiment file (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides), args


@reporting
def main(argv: list[str] | None = None) -> int:
    if os.environ.get(TEST_HOOK):
        importlib.import_module(os.environ[TEST_HOOK])
    config, _ = parse_args(argv)
    result = run(config)
    return EXIT_PREEMPTED if result.status == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main())
