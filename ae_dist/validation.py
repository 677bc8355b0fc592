"""Validation passes, model selection and early stopping, called by the loop in `ae_dist.trainer`.

A pass evaluates the raw weights, and the EMA's when ``train.ema_decay`` > 0, on the validation split
(``data.val_fraction``) every ``train.eval_every_steps`` steps, or at each epoch's end when that is 0.
The selected weights (the EMA's when on, else the raw ones) are written to ``RUN/model-best.pt``
whenever their loss is a new best; ``train.early_stop_patience`` passes without one end the run, as
a completed run that goes through the normal wrap-up. One ``val`` record per pass in metrics.jsonl.
"""

from __future__ import annotations

from ae_dist import engine
from ae_dist.build import Training
from ae_dist.monitor.monitor import Monitor, NullMonitor
from ae_dist.run.checkpoint import write_atomic


def due(t: Training, step: int, epoch_end: bool) -> bool:
    """Whether a validation pass is due after ``step``: every train.eval_every_steps, else at epoch ends."""
    every = t.config.train.eval_every_steps
    if t.val_split is None:
        return False
    return step % every == 0 if every else epoch_end


def validate(t: Training, monitor: Monitor | NullMonitor) -> bool:
    """One validation pass; model-best.pt on a new best. True when the run stops early here."""
    cfg, state, selection = t.config, t.state, t.selection
    batch = cfg.train.eval_batch_size
    record = {"kind": "val", "step": state.step, "epoch": state.epoch + 1,
              "val_loss": engine.evaluate(t.model, t.val_split, batch, cfg.train, t.info)}
    selected = t.model
    if t.ema is not None:
        record["val_loss_ema"] = engine.evaluate(t.ema.model, t.val_split, batch, cfg.train, t.info)
        selected = t.ema.model
    t.model.train()
    improved = selection.observe(record["val_loss_ema" if t.ema is not None else "val_loss"], state.step,
                                 cfg.train.early_stop_patience)
    state.selection = selection.to_list()
    if improved and t.info.is_main:
        write_atomic(t.run_dir.model_best, {k: v.detach().cpu() for k, v in selected.state_dict().items()})
    record.update(best_val_loss=selection.best_loss, best_step=selection.best_step, stopped_early=selection.stopped_early)
    monitor.log(record)
    if selection.stopped_early:
        t.say(f"stopped early at step {state.step}: no better validation loss in {selection.since_best} passes "
              f"(train.early_stop_patience={cfg.train.early_stop_patience}); best {selection.best_loss:.6f} at step "
              f"{selection.best_step} (model-best.pt)")
    return selection.stopped_early
