"""One typed config tree: defaults, then YAML, then dotted overrides (`train.epochs=3`).

    python -m ae_dist.train --config digits train.epochs=3 optim.lr=3e-3

Every field carries its meaning in ``metadata["help"]``, which `--help` prints; a field with a
fixed set of values is typed ``Literal[...]`` and those values are its choices (checked here,
listed by `--help`). Values from YAML and from the command line are converted by the field's
declared type, so `1e-3` is a float whatever PyYAML thinks of it. All problems are reported
at once, each naming its dotted key and the fix. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from ae_dist.config.files import DEFAULT_CONFIG, PACKAGED_CONFIGS, find_config, flatten, read_config_file, read_yaml
from ae_dist.config.templates import template_problems
from ae_dist.config.types import choices, convert, shown, type_word
from ae_dist.errors import UsageError


def _field(default: Any, help: str, path: bool | tuple[str, ...] = False) -> Any:
    """A config field; ``path``: its value is a file or folder (True), or one unless it is one of these words,
    which `resolve_paths` expands (``~``) and, for the launcher, makes absolute."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"help": help, "path": path})


@dataclass(frozen=True)
class DataConfig:
    name: Literal["fashion_mnist", "mnist", "digits", "synthetic", "folder", "array"] = _field(
       "fashion_mnist", "dataset; digits (scikit-learn's, bundled) and synthetic need no download; folder = your image "
                        "folder tree (data.path), array = your .npy (data.path)")
    root: str = _field("./data", "folder holding torchvision's dataset folders (FashionMNIST/raw, MNIST/raw)",
                       path=True)
    download: bool = _field(True, "download fashion_mnist/mnist into data.root when missing")
    synthetic_train: int = _field(60_000, "number of training images of the synthetic dataset")
    synthetic_test: int = _field(10_000, "number of test images of the synthetic dataset")
    val_fraction: float = _field(0.0, "share of the training split held out for validation, chosen by a hash of each "
                                      "row's key (0 = none)")
    path: str = _field("", "folder=an image folder (one subfolder per class) | array=a .npy of (N,H,W) or (N,C,H,W) "
                           "images, uint8 or float in [0,1]", path=True)
    labels: str = _field("", "array: a .npy of N integer labels (empty: every row is class 0)", path=True)
    size: tuple[int, ...] = _field((28, 28), "folder: H,W every image is converted to (arrays keep their own shape)")
    channels: int = _field(1, "folder: 1 (grayscale) or 3 (RGB) channels every image is converted to")
    fit: Literal["crop", "pad", "stretch"] = _field(
        "crop", "folder: how an image of another aspect ratio meets data.size: crop (scale to cover, cut the centre) | "
                "pad (scale to fit, black borders) | stretch")
    max_pixels: int = _field(128_000_000, "folder: largest image decoded, in pixels (after JPEG reduced decoding); "
                                          "larger ones are skipped with their reason")
    cache_dir: str = _field("./data/prepared", "where prepared datasets go (folders, converted arrays); shared by every "
                                               "node of a job; never inside data.path", path=True)
    test_path: str = _field("", "folder/array: a second folder or .npy as the test split (empty: data.test_fraction)",
                            path=True)
    test_labels: str = _field("", "array: the labels .npy of data.test_path", path=True)
    test_fraction: float = _field(0.1, "folder/array without data.test_path: share held out as the test split by a "
                                       "hash of each file's relative path (row index for arrays)")
    classes: tuple[str, ...] = _field((), "keep only these classes in the train and val splits (label ints or folder "
                                          "class names, comma-separated); the test split stays whole")
    on_bad_image: Literal["skip", "error"] = _field(
        "skip", "folder: an unreadable or oversized image is skipped (listed in the manifest, counted in one warning "
                "line) | error: stop at the first one")


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["mlp", "conv"] = _field("mlp", "mlp: the seed's exact autoencoder; conv: stride-2 convolutions")
    latent_dim: int = _field(3, "size of the latent code")
    hidden: tuple[int, ...] = _field((128, 64, 12), "mlp hidden widths, encoder order (decoder mirrors them)")
    channels: tuple[int, ...] = _field((16, 32), "conv channels per stride-2 stage")
    kind: Literal["ae", "dae", "vae"] = _field(
        "ae", "ae: plain autoencoder; dae: denoising (inputs get Gaussian noise of model.noise_std, targets stay "
              "clean); vae: variational (the encoder gives a mean and log-variance, loss = MSE + model.beta x KL / pixels)")
    noise_std: float = _field(0.1, "dae: standard deviation of the noise added to each input pixel")
    beta: float = _field(1.0, "vae: weight of the KL term (per sample, divided by the pixel count) beside the MSE")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _field(10, "number of passes over the training split")
    batch_size: int = _field(64, "GLOBAL batch over all ranks (divisible by world size); incomplete last batch dropped")
    seed: int = _field(0, "seed for weights, the per-epoch permutation and all RNGs")
    resume: str = _field("auto", "auto (newest complete checkpoint in run.dir) | changed (the same, accepting changed "
                                 "config values, recorded in config-history.jsonl) | never | PATH to a checkpoint",
                         path=("auto", "changed", "never"))
    max_steps: int = _field(0, "stop after this many optimizer steps in all (0 = no limit); the run can be continued")
    log_every: int = _field(100, "steps between train-loss log records (each costs one host sync)")
    eval_batch_size: int = _field(1000, "batch size for the validation and test passes")
    accumulate: int = _field(1, "micro-batches per optimizer step (gradients summed, one all-reduce per step); "
                                "train.batch_size stays the global batch per step and must divide by world size x this")
    ema_decay: float = _field(0.0, "exponential moving average of the weights, updated each step (e.g. 0.999; 0 = off); "
                                   "saved as model-ema.pt and used to choose model-best.pt")
    eval_every_steps: int = _field(0, "steps between validation passes (0 = at each epoch end); needs data.val_fraction > 0")
    early_stop_patience: int = _field(0, "stop (a completed run) after this many validation passes without a new best "
                                         "(0 = off); needs data.val_fraction > 0")
    threads: int = _field(0, "intra-op threads per rank; 0 = SLURM_CPUS_PER_TASK, else node cores / ranks on the node")
    nan_policy: Literal["stop", "skip"] = _field(
        "stop", "on a NaN/Inf loss: stop = exit naming the step; skip = drop that step's update and count it")
    precision: Literal["fp32", "bf16"] = _field("fp32", "bf16 = autocast (CUDA and CPU; not bitwise comparable with fp32)")
    flush_denormal: bool = _field(True, "CPU: flush denormal floats to zero; else near-zero sigmoid outputs slow steps "
                                        "~6x after an epoch; resumes bitwise, results differ from false in the last bits")
    compile: Literal["off", "default", "reduce-overhead"] = _field(
        "off", "torch.compile mode (reduce-overhead: with CUDA graphs); first steps slower; on CPU resumes bitwise, "
               "results differ from off in the last bits")
    device: Literal["auto", "cpu", "cuda"] = _field("auto", "auto = CUDA when available (device LOCAL_RANK modulo the "
                                                    "devices the task sees), else cpu")
    deterministic: bool = _field(False, "CUDA: deterministic algorithms and CUBLAS_WORKSPACE_CONFIG=:4096:8, so a "
                                        "resume is bitwise (slower); the CPU is deterministic either way")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _field(1e-3, "Adam learning rate")
    weight_decay: float = _field(1e-5, "Adam weight decay (L2, as torch.optim.Adam)")
    impl: Literal["auto", "fused", "foreach", "loop"] = _field(
        "auto", "Adam implementation; auto = fused where the device has it, CPU included; each resumes bitwise, "
                "they differ in the last bits")
    schedule: Literal["constant", "cosine", "linear"] = _field(
        "constant", "learning rate after warmup, over train.epochs x steps per epoch: constant | cosine | linear "
                    "(both decay from optim.lr to optim.min_lr)")
    warmup_steps: int = _field(0, "optimizer steps of linear warmup from optim.lr / warmup_steps up to optim.lr")
    min_lr: float = _field(0.0, "learning rate at the last step of a cosine or linear schedule")
    clip_grad_norm: float = _field(0.0, "clip the global gradient norm to this (0 = off); the norm is logged as grad_norm")


@dataclass(frozen=True)
class RunConfig:
    dir: str = _field("runs/default", "run folder (~ expands): config, metrics, checkpoints, weights, pictures; "
                                      "same folder = resume", path=True)
    progress: Literal["auto", "bar", "lines", "off"] = _field(
        "auto", "auto = a bar on a terminal, else plain lines with rate and ETA (SLURM logs)")
    lease_stale_s: float = _field(60.0, "a run folder's lease held from another host is taken over when its "
                                        "heartbeat is older than this (seconds)")


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = _field(500, "steps between checkpoints (one is also written at each epoch end); 0 = epoch ends only")
    keep: int = _field(3, "number of newest checkpoints kept")


@dataclass(frozen=True)
class DistConfig:
    timeout_s: float = _field(300.0, "seconds a rank waits on the others in a collective before giving up")
    static_graph: bool = _field(True, "DDP static_graph (the graph never changes here; off under train.accumulate > 1, "
                                           "which it does not support); resumes bitwise either way")
    bucket_view: bool = _field(True, "DDP gradient_as_bucket_view (saves a gradient copy); resumes bitwise either way")


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["", "online", "offline", "disabled"] = _field(
        "", "W&B mode; empty = online when W&B credentials exist, else offline")
    project: str = _field("ae-dist", "W&B project")
    entity: str = _field("", "W&B entity (team or user); empty = your default")
    group: str = _field("", "W&B group; empty = SLURM job id or torchrun run id when present")
    name: str = _field("", "W&B run name; empty = run folder name (+ job id)")
    images_every_epochs: int = _field(1, "epochs between reconstruction/latent images in W&B; 0 = never")
    tags: tuple[str, ...] = _field((), "W&B run tags, comma-separated (e.g. wandb.tags=baseline,digits)")
    notes: str = _field("", "W&B run notes: a sentence on what this run tries")
    job_type: str = _field("train", "W&B job type (train, sweep, eval, ...)")
    system_metrics: bool = _field(True, "W&B's own system monitor (CPU, memory, disk, network; GPU where one exists) "
                                        "on rank 0's node")
    log_checkpoints: Literal["off", "reference", "upload"] = _field(
        "reference", "the newest checkpoint as a W&B artifact when the run stops: off | reference (points at the "
                     "file, nothing uploaded) | upload (a copy)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


AT_LEAST_1 = ("model.latent_dim", "train.epochs", "train.batch_size", "train.log_every",
              "train.eval_batch_size", "checkpoint.keep", "data.synthetic_train", "data.synthetic_test", "train.accumulate")
AT_LEAST_0 = ("train.max_steps", "train.seed", "train.threads", "checkpoint.every_steps", "wandb.images_every_epochs",
              "train.eval_every_steps", "train.early_stop_patience", "optim.warmup_steps")
NOT_NEGATIVE = ("optim.min_lr", "optim.clip_grad_norm", "model.noise_std", "model.beta")
POSITIVE = ("optim.lr", "dist.timeout_s", "run.lease_stale_s")
AT_MOST = {"train.batch_size": 1 << 24, "train.eval_batch_size": 1 << 24, "data.synthetic_train": 1 << 24,
           "data.synthetic_test": 1 << 24, "model.latent_dim": 1 << 16, "train.threads": 1 << 12, "train.seed": 1 << 62,
           "dist.timeout_s": 1e7}
MAX_PARAMETERS = 1 << 31


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


def leaf_fields() -> dict[str, tuple[type, dataclasses.Field]]:
    """Every dotted key with its declared type and field."""
    leaves = {}
    for section, cls in _sections().items():
        hints = get_type_hints(cls)
        for f in fields(cls):
            leaves[f"{section}.{f.name}"] = (hints[f.name], f)
    return leaves


DATASETS: tuple[str, ...] = choices(get_type_hints(DataConfig)["name"])
MODELS: tuple[str, ...] = choices(get_type_hints(ModelConfig)["name"])


def suggest_key(text: str) -> str | None:
    """The config key someone most likely meant, searching every section (`train.lr` -> `optim.lr`)."""
    text = text.strip().lstrip("-").replace("-", "_")
    section, _, name = text.rpartition(".")
    best, best_score = None, 0.0
    for key in leaf_fields():
        key_section, key_name = key.split(".", 1)
        score = max(difflib.SequenceMatcher(None, name, key_name).ratio(),
                    difflib.SequenceMatcher(None, text, key).ratio(),
                    difflib.SequenceMatcher(None, text, key.replace(".", "_")).ratio())
        score += 0.01 * (key_section == section)  # ties go to the section written
        if score > best_score:
            best, best_score = key, score
    return best if best_score >= 0.6 else None


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError("override is not key=value", shown(item)[1:-1], "write e.g. train.epochs=3")
        overrides[key.strip()] = value
    return overrides


def build_config(values: dict[str, Any], source: str = "config") -> Config:
    """Build a validated Config from flat dotted values; every problem is reported at once."""
    leaves = leaf_fields()
    problems: list[tuple[str, str, str]] = []
    sections: dict[str, dict[str, Any]] = {name: {} for name in _sections()}
    for key, raw in values.items():
        if key not in leaves:
            close = suggest_key(key)
            hint = f"did you mean {close}?" if close else "see --help for every key"
            problems.append((f"unknown config key in {source}", shown(key)[1:-1], hint))
            continue
        kind, _ = leaves[key]
        try:
            value = convert(raw, kind)
        except ValueError as err:
            problems.append((f"wrong type, {err}", key, f"give {type_word(kind)}"))
            continue
        section, name = key.split(".", 1)
        sections[section][name] = value
    if problems:
        raise UsageError.many(problems)
    config = Config(**{name: cls(**sections[name]) for name, cls in _sections().items()})
    problems = validate(config)
    if problems:
        raise UsageError.many(problems)
    return config


def validate(config: Config) -> list[tuple[str, str, str]]:
    flat = to_flat(config)
    problems = []
    for key, (kind, _) in leaf_fields().items():
        if choices(kind) and flat[key] not in choices(kind):
            problems.append((f"invalid value {shown(flat[key])}", key, f"use {type_word(kind)}"))
    for key in AT_LEAST_1:
        if flat[key] < 1:
            problems.append((f"invalid value {flat[key]!r}", key, "use an integer >= 1"))
    for key in AT_LEAST_0:
        if flat[key] < 0:
            problems.append((f"invalid value {flat[key]!r}", key, "use an integer >= 0"))
    for key in POSITIVE:
        if not flat[key] > 0:
            problems.append((f"invalid value {flat[key]!r}", key, "use a number > 0"))
    for key in ("optim.weight_decay", *NOT_NEGATIVE):
        if not flat[key] >= 0:
            problems.append((f"invalid value {flat[key]!r}", key, "use a number >= 0"))
    if not 0 <= flat["train.ema_decay"] < 1:
        problems.append((f"invalid value {flat['train.ema_decay']!r}", "train.ema_decay", "use a number in [0, 1), e.g. 0.999"))
    if flat["optim.lr"] > 0 and flat["optim.min_lr"] > flat["optim.lr"]:
        problems.append((f"optim.min_lr {flat['optim.min_lr']!r} is above optim.lr {flat['optim.lr']!r}", "optim.min_lr",
                         "use at most optim.lr"))
    for key in ("train.eval_every_steps", "train.early_stop_patience"):
        if flat[key] and not flat["data.val_fraction"] > 0:
            problems.append(("no validation split to evaluate on", key, "set data.val_fraction (e.g. 0.1), or leave it 0"))
    for key in ("model.hidden", "model.channels"):
        if not flat[key] or any(width < 1 for width in flat[key]):
            problems.append((f"invalid value {shown(list(flat[key]))}", key, "use a list of integers >= 1"))
    for key, most in AT_MOST.items():
        if flat[key] > most:
            problems.append((f"value too large ({flat[key]:.3g})", key, f"use at most {most:g}"))
    problems += _data_problems(flat)
    if flat["model.name"] == "conv" and len(flat["model.channels"]) > 6:
        problems.append((f"{len(flat['model.channels'])} conv stages", "model.channels", "use 1 to 6 stages"))
    elif _parameter_count(flat) > MAX_PARAMETERS:
        key = "model.hidden" if flat["model.name"] == "mlp" else "model.channels"
        problems.append((f"model too large ({_parameter_count(flat):.2g} weights)", key,
                         f"keep it under {MAX_PARAMETERS:.2g} weights"))
    for tag in flat["wandb.tags"]:
        if not 1 <= len(tag) <= 64:
            problems.append((f"invalid tag {tag[:80]!r}", "wandb.tags", "use tags of 1 to 64 characters"))
    problems += template_problems(flat["run.dir"])  # run.dir may name {wandb_run_id}, {date}, {time}
    if not flat["run.dir"].strip():
        problems.append(("empty run folder", "run.dir", "give a folder path"))
    for key in path_keys():
        name = flat[key].encode("utf-8", "surrogateescape")
        if b"\0" in name or len(name) >= 4096 or any(len(part) > 255 for part in name.split(b"/")):
            problems.append(("not a usable path (a NUL byte, or a name too long)", key, "give a shorter folder path"))
    return problems


def _data_problems(flat: dict[str, Any]) -> list[tuple[str, str, str]]:
    problems = []
    size = flat["data.size"]
    if len(size) != 2 or any(not 1 <= side <= 1 << 15 for side in size):
        problems.append((f"invalid value {shown(list(size))}", "data.size", "use H,W: two integers from 1 to 32768"))
    if flat["data.channels"] not in (1, 3):
        problems.append((f"invalid value {flat['data.channels']!r}", "data.channels", "use 1 (grayscale) or 3 (RGB)"))
    if flat["data.max_pixels"] < 1:
        problems.append((f"invalid value {flat['data.max_pixels']!r}", "data.max_pixels", "use an integer >= 1"))
    for key in ("data.test_fraction", "data.val_fraction"):
        if not 0 <= flat[key] < 1:
            problems.append((f"invalid value {flat[key]!r}", key, "use a number from 0 to below 1"))
    if flat["data.name"] in ("folder", "array") and not flat["data.path"].strip():
        what = "an image folder" if flat["data.name"] == "folder" else "a .npy file"
        problems.append((f"data.name={flat['data.name']} needs data.path", "data.path", f"give {what}"))
    if flat["data.name"] in ("folder", "array") and not flat["data.cache_dir"].strip():
        problems.append(("empty cache folder", "data.cache_dir", "give a folder that every node of the job sees"))
    return problems


def image_shape(flat: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) the config asks for: data.channels and data.size for folders, the seed's 1x28x28 otherwise."""
    if flat["data.name"] == "folder" and len(flat["data.size"]) == 2:
        return flat["data.channels"], *flat["data.size"]
    return 1, 28, 28


def _parameter_count(flat: dict[str, Any]) -> int:
    """About how many weights the model has (both halves), before building it (arrays: counted at 1x28x28 here,
    checked again on their own shape when the model is built)."""
    latent = flat["model.latent_dim"]
    c, h, w = image_shape(flat)
    if flat["model.name"] == "mlp":
        widths = [c * h * w, *flat["model.hidden"], latent]
        return 2 * sum(a * b for a, b in zip(widths, widths[1:]))
    channels = [c, *flat["model.channels"]]
    stride = 1 << (len(channels) - 1)
    flat_size = channels[-1] * -(-h // stride) * -(-w // stride)
    return 2 * (sum(9 * a * b for a, b in zip(channels, channels[1:])) + flat_size * latent)


def path_keys() -> dict[str, tuple[str, ...]]:
    """Every key whose value is a path (its field says ``path=``), with the words that are not paths."""
    return {key: () if f.metadata["path"] is True else f.metadata["path"]
            for key, (_, f) in leaf_fields().items() if f.metadata["path"]}


def resolve_paths(config: Config, absolute: bool = False) -> Config:
    """``config`` with ``~`` expanded in every path key (`path_keys`), to this machine's home; with ``absolute``,
    each also made absolute against the working folder. The one place paths are resolved: the trainer at its
    start, and the launcher where it submits (under --remote, on the login node: ``~`` is the home there)."""
    changed: dict[str, dict[str, str]] = {}
    for key, words in path_keys().items():
        section, name = key.split(".", 1)
        value = getattr(getattr(config, section), name)
        if not value or value in words:
            continue
        resolved = os.path.expanduser(value)
        resolved = os.path.abspath(resolved) if absolute else resolved
        if resolved != value:
            changed.setdefault(section, {})[name] = resolved
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)
                                          for section, values in changed.items()})


def check_world_size(config: Config, world_size: int) -> None:
    """The global batch is split evenly across ranks and each rank's share into train.accumulate micro-batches."""
    parts = world_size * config.train.accumulate
    if config.train.batch_size % parts:
        within = f" x train.accumulate {config.train.accumulate}" if config.train.accumulate > 1 else ""
        raise UsageError(
            f"global batch {config.train.batch_size} does not divide by world size {world_size}{within}",
            "train.batch_size",
            f"use a multiple of {parts}",
        )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (a path, a packaged name, or the packaged default.yaml), then dotted overrides."""
    found = find_config(path)
    values = read_config_file(found)
    merged = {**values, **parse_overrides(overrides or [])}
    try:
        build_config(values, "--config file" if path is not None else str(found))
    except UsageError as file_problems:  # named as the file's own, unless the overrides mend them (a template's data.path)
        try:
            return build_config(merged, "overrides")
        except UsageError:
            raise file_problems from None
    return build_config(merged, "overrides")


def load_saved(path: Path, overrides: list[str] | None = None) -> Config:
    """A run folder's config.yaml (read as safely as --config), then dotted overrides."""
    values = read_yaml(path, what="run config", missing_fix="give the run.dir of a run")
    build_config(values, str(path))
    values.update(parse_overrides(overrides or []))
    return build_config(values, "overrides")


def to_flat(config: Config) -> dict[str, Any]:
    return {f"{section}.{k}": v for section, tree in dataclasses.asdict(config).items() for k, v in tree.items()}


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict (tuples as lists), ready for YAML, JSON, W&B and checkpoints."""
    return {section: {k: list(v) if isinstance(v, tuple) else v for k, v in tree.items()}
            for section, tree in dataclasses.asdict(config).items()}


def from_dict(tree: dict[str, Any]) -> Config:
    return build_config(flatten(tree), "saved config")


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # config files take no aliases: never write one
        return True


def dump_yaml(config: Config) -> str:
    return yaml.dump(to_dict(config), Dumper=_PlainDumper, sort_keys=False)


__all__ = ["PACKAGED_CONFIGS", "DEFAULT_CONFIG", "Config", "load_config", "load_saved", "build_config", "check_world_size",
           "to_dict", "from_dict", "dump_yaml", "choices", "suggest_key", "path_keys", "resolve_paths"]
