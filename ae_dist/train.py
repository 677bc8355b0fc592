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
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ae_dist import checkpoint, data, engine, plots
from ae_dist.config import Config, check_world_size, dump_yaml, help_text, load_config, to_dict
from ae_dist.dist import DistInfo, RendezvousFailed, barrier, cpu_threads, distributed, read_env
from ae_dist.errors import EXIT_USAGE, UsageError, exits_on_usage_error
from ae_dist.liveness import PeerLost
from ae_dist.loggers import Monitor, NullMonitor, Progress, read_metrics
from ae_dist.models import build_model
from ae_dist.preemption import EXIT_PREEMPTED, StopSignals

EXIT_FAILED = 1
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)
PICTURE_COUNT = 10


@dataclass(frozen=True)
class RunResult:
    status: str  # "completed" | "preempted"
    run_dir: Path
    step: int
    signal: int = 0


def run(config: Config) -> RunResult:
    """Train (or resume, or find complete) the run in ``config.run.dir``; every rank calls this."""
    check_world_size(config, int(read_env().get("WORLD_SIZE", "1")))  # before any rank waits for the others
    torch.set_flush_denormal(config.train.flush_denormal)  # before any thread pool starts: its threads inherit it
    with distributed(config.train.device, config.dist.timeout_s) as info:
        if info.device.type == "cpu":
            torch.set_num_threads(cpu_threads(info.local_world_size, config.train.threads))
        try:
            return Trainer(config, info).fit()
        except UsageError as err:
            if not info.is_main:  # rank 0 speaks for shared problems; this one may be this rank's own
                for line in err.lines():
                    print(f"rank {info.rank}: {line}", file=sys.stderr, flush=True)
            raise


class Trainer:
    def __init__(self, config: Config, info: DistInfo):
        self.config, self.info = config, info
        self.run_dir = Path(config.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resolved = to_dict(config)
        torch.manual_seed(config.train.seed)
        self.train_split, self.test_split = load_data(config, info)
        self.raw_model = build_model(config.model).to(info.device)
        self.optimizer = engine.build_optimizer(self.raw_model, config.optim, info.device)
        self.state = checkpoint.TrainState()
        self.last_saved_step = -1
        self.resume()
        if info.is_main:  # after resume(): a command refused there leaves the run's config.yaml as it was
            prepare_run_dir(self.run_dir, config)

    def resume(self) -> None:
        mode = self.config.train.resume
        if mode == "never":
            if checkpoint.list_checkpoints(self.ckpt_dir) or read_metrics(self.run_dir / "metrics.jsonl"):
                raise UsageError("train.resume=never, but the run folder already holds a run", str(self.run_dir),
                                 "continue it with train.resume=auto, or start over in an empty run.dir")
            found = None
        elif mode == "auto":
            found = checkpoint.load_latest(self.ckpt_dir, warn=self._warn)
        else:
            found = checkpoint.load_path(Path(mode))
        own_run_id = read_run_info(self.run_dir).get("wandb_run_id", "")
        if found is None:
            self.state.wandb_run_id = own_run_id
            return
        path, saved = found
        checkpoint.check_compatible(saved["config"], self.resolved, path)
        self.raw_model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        checkpoint.set_rng_state(saved["rng"])
        # A checkpoint of another run folder (train.resume=PATH) starts this folder's own W&B run.
        ours = path.resolve().parent == self.ckpt_dir.resolve()
        self.state = checkpoint.TrainState(saved["epoch"], saved["batch"], saved["step"],
                                           saved.get("wandb_run_id", "") if ours else own_run_id,
                                           saved.get("skipped_steps", 0), *saved.get("epoch_loss", (0.0, 0)))
        self.last_saved_step = self.state.step
        self._say(f"resumed from {path} (epoch {self.state.epoch + 1}, step {self.state.step})")

    def fit(self) -> RunResult:
        cfg = self.config
        if self.state.epoch >= cfg.train.epochs:
            self._say(f"run complete: {self.run_dir} (step {self.state.step})")
            if self.info.is_main and not (self.run_dir / "model.pt").exists():
                self.finish()
            return RunResult("completed", self.run_dir, self.state.step)
        model = self.wrap(self.raw_model)
        batches = data.EpochBatches(self.train_split, cfg.train.batch_size, self.info.rank,
                                    self.info.world_size, cfg.train.seed)
        self.monitor = self.open_monitor()
        progress = Progress(cfg.run.progress, cfg.train.epochs * len(batches), self.info.is_main, cfg.train.log_every)
        progress.start_at(self.state.step)
        try:
            with StopSignals(self.info) as stop:
                while self.state.epoch < cfg.train.epochs:
                    result = engine.train_one_epoch(
                        model, self.optimizer, batches, self.state, cfg.train, self.info, stop,
                        on_step=lambda loss: self.on_step(loss, progress), checkpoint_due=self.checkpoint_due,
                        save_checkpoint=self.save)
                    if result.stopped_by:
                        self.save()
                        self._say(f"stopped by signal {result.stopped_by} at step {self.state.step}; "
                                  f"checkpoint written, run the same command to continue")
                        return RunResult("preempted", self.run_dir, self.state.step, result.stopped_by)
                    self.end_epoch(result)
        except engine.Diverged as err:
            raise Diverged(f"error: {err} (train.nan_policy={cfg.train.nan_policy}): lower optim.lr or use "
                           f"train.nan_policy=skip; the newest checkpoint in {self.ckpt_dir} is the last good state") from None
        finally:
            progress.close()
            self.monitor.close()
        if self.info.is_main:
            self.finish()
        barrier(self.info)
        return RunResult("completed", self.run_dir, self.state.step)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids, static_graph=self.config.dist.static_graph,
                                            gradient_as_bucket_view=self.config.dist.bucket_view)
        if self.config.train.compile != "off":
            model = torch.compile(model, mode=None if self.config.train.compile == "default" else "reduce-overhead")
        return model

    def open_monitor(self) -> Monitor | NullMonitor:
        if not self.info.is_main:
            return NullMonitor()
        if not self.state.wandb_run_id:
            self.state.wandb_run_id = secrets.token_hex(4)
            write_run_info(self.run_dir, wandb_run_id=self.state.wandb_run_id)
        return Monitor(self.run_dir, self.config.wandb, self.state.wandb_run_id, self.resolved,
                       self.config.train.epochs)

    def on_step(self, loss: float | None, progress: Progress) -> None:
        progress.update(self.state.step, self.state.epoch + 1, loss)
        if loss is not None:
            self.monitor.log({"kind": "train", "step": self.state.step, "epoch": self.state.epoch + 1,
                              "loss": loss, "lr": self.optimizer.param_groups[0]["lr"]})

    def checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint.every_steps
        return bool(every) and step % every == 0

    def end_epoch(self, result: engine.EpochResult) -> None:
        cfg = self.config
        test_loss = engine.evaluate(self.raw_model, self.test_split, cfg.train.eval_batch_size, cfg.train, self.info)
        self.state.epoch += 1
        self.state.batch = 0
        self.state.epoch_loss_sum, self.state.epoch_loss_count = 0.0, 0
        record = {"kind": "epoch", "step": self.state.step, "epoch": self.state.epoch, "train_loss": result.loss,
                  "test_loss": test_loss, "samples_per_s": result.samples_per_s,
                  "lr": self.optimizer.param_groups[0]["lr"], "skipped_steps": self.state.skipped_steps}
        images = {}
        every = cfg.wandb.images_every_epochs
        if self.info.is_main and every and (self.state.epoch % every == 0 or self.state.epoch == cfg.train.epochs):
            images = self.draw_pictures()
        self.monitor.log(record, images)
        self.monitor.epoch_line(record)
        self.save()

    def save(self) -> None:
        if self.info.is_main and self.state.step != self.last_saved_step:
            try:
                checkpoint.save(self.ckpt_dir, self.raw_model, self.optimizer, self.state, self.resolved,
                                self.config.checkpoint.keep)
            except checkpoint.CheckpointWriteError as err:
                raise CheckpointFailed(err.strerror) from None
        self.last_saved_step = self.state.step

    def draw_pictures(self) -> dict[str, Path]:
        model, split = self.raw_model, self.test_split
        with torch.no_grad():
            model.eval()
            shown = split.images[:PICTURE_COUNT].float().div_(255)
            recon = model(shown)
        codes = engine.encode_all(model, split, self.config.train.eval_batch_size)
        title = f"epoch {self.state.epoch}, step {self.state.step}"
        paths = {"recon": self.run_dir / "recon.png", "latent": self.run_dir / "latent.png"}
        plots.draw_reconstructions(shown, recon, paths["recon"], f"test images above reconstructions ({title})")
        plots.draw_latent(codes, split.labels, paths["latent"], f"test-set latent codes by class ({title})")
        return paths

    def finish(self) -> None:
        """Final weights (a plain state_dict, no wrapper prefixes), pictures, loss curve."""
        checkpoint.write_atomic(self.run_dir / "model.pt",
                                {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()})
        self.draw_pictures()
        plots.draw_loss(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "loss.png")
        self._say(f"done: {self.run_dir} (model.pt, recon.png, latent.png, loss.png, metrics.jsonl)")

    def _say(self, line: str) -> None:
        if self.info.is_main:
            print(line, flush=True)

    def _warn(self, line: str) -> None:
        if self.info.is_main:
            print(line, file=sys.stderr, flush=True)


class CheckpointFailed(RuntimeError):
    pass


class Diverged(RuntimeError):
    """The loss went NaN/Inf under train.nan_policy=stop; the message is one ``error:`` line naming the step."""


def load_data(config: Config, info: DistInfo) -> tuple[data.Split, data.Split]:
    """Rank 0 first (it may download), then the others; both splits moved to the device."""
    splits = None
    if info.is_main:
        splits = data.load_split(config.data, train=True), data.load_split(config.data, train=False)
    barrier(info)
    if splits is None:
        splits = data.load_split(config.data, train=True), data.load_split(config.data, train=False)
    return splits[0].to(info.device), splits[1].to(info.device)


def prepare_run_dir(run_dir: Path, config: Config) -> None:
    """Create the folder; write the resolved config and the run's provenance."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(dump_yaml(config), encoding="utf-8")
        os.replace(tmp, run_dir / "config.yaml")
    except OSError as err:
        raise UsageError(f"cannot write the run folder ({err.strerror})", "run.dir", "choose a writable folder") from None
    info = read_run_info(run_dir)
    if "git_sha" not in info:
        write_run_info(run_dir, git_sha=_git_sha(), torch=torch.__version__, python=sys.version.split()[0],
                       command=" ".join(sys.argv))


def read_run_info(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_run_info(run_dir: Path, **values) -> None:
    info = read_run_info(run_dir) | values
    tmp = run_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "run.json")


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m ae_dist.train", description="Train an autoencoder (CPU, torchrun, srun or submitit).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_text())
    parser.add_argument("--config", help="YAML experiment file (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides), args


@exits_on_usage_error
def main(argv: list[str] | None = None) -> int:
    config, _ = parse_args(argv)
    try:
        result = run(config)
    except CheckpointFailed as err:
        print(f"error: {err} (run.dir): the previous checkpoint is intact; free space, then run the same command "
              "to resume", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except (PeerLost, Diverged) as err:
        print(err, file=sys.stderr, flush=True)
        return EXIT_FAILED
    except RendezvousFailed as err:
        print(err, file=sys.stderr, flush=True)
        return EXIT_USAGE
    except OSError as err:  # metrics.jsonl, pictures, model.pt or W&B files on a full or failed disk
        if err.errno not in DISK_ERRORS:
            raise
        print(f"error: cannot write {err.filename or config.run.dir}: {err.strerror} (run.dir): the newest "
              "checkpoint is intact; free space, then run the same command to resume", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_PREEMPTED if result.status == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main())
