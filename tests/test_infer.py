"""Using a trained run: ae_dist.load, encode (resumable, the same bytes at any world size), score, export."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ae_dist.config import dump_yaml, load_config, to_dict
from ae_dist.errors import UsageError
from ae_dist.infer import run as infer_run
from ae_dist.models import build_model
from ae_dist.run import checkpoint
from tests.helpers.commands import PYTHON, REPO, clean_env, hook_env, wait_for
from tests.helpers.faults import one_clear_line, tmpfs
from tests.helpers.processes import Job

FILES = ("codes.npy", "errors.npy", "labels.npy", "index.npy", "manifest.json")
QUIET = ["wandb.mode=disabled", "run.progress=off"]


class NoStop:
    """In-process runs: no signal handlers (the test process keeps its own), never asked to stop."""

    phase = ""

    received = 0


def make_run(root: Path, latent_dim: int = 3, seed: int = 0) -> Path:
    """A run folder with random weights of the digits experiment: model.pt and a checkpoint at step 7."""
    config = load_config("digits", [f"run.dir={root}", f"model.latent_dim={latent_dim}"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    torch.manual_seed(seed)
    model = build_model(config.model)
    torch.save(model.state_dict(), root / "model.pt")
    checkpoint.save(root / "checkpoints", model, torch.optim.Adam(model.parameters()), checkpoint.TrainState(step=7),
                    to_dict(config), keep=3)
    return root


def encode(run: Path, out: Path, part: str = "train", overrides: tuple[str, ...] = (), **kwargs) -> infer_run.Encoded:
    kwargs = {"chunk_rows": 100, "batch_size": 50, "overwrite": False, **kwargs}
    return infer_run.encode(run, kwargs.pop("weights", "final"), [*QUIET, *overrides],
                            [infer_run.Part(part, out / part, (*QUIET, *overrides))], NoStop(), **kwargs)


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def encode_cmd(run: Path, *args: str, nproc: int = 1) -> list[str]:
    head = [PYTHON, "-m", "ae_dist.encode"] if nproc == 1 else [
        PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "ae_dist.encode"]
    return [*head, str(run), "--split", "train", "--chunk-rows", "100", "--batch-size", "50", *QUIET, *args]


@pytest.mark.fast
def test_import_ae_dist_loads_no_torch_and_load_is_there() -> None:
    done = subprocess.run([PYTHON, "-c", "import sys, ae_dist; assert 'torch' not in sys.modules; "
                           "f = ae_dist.load; print(f.__module__, 'torch' in sys.modules)"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["ae_dist.infer.load", "False"], done.stderr


@pytest.mark.fast
def test_load_each_weights_choice_and_each_broken_run(tmp_path: Path) -> None:
    import ae_dist

    run = make_run(tmp_path / "run")
    model = ae_dist.load(run)
    assert not model.training
    x = torch.rand(4, 1, 28, 28)
    assert model.decode(model.encode(x)).shape == x.shape
    saved = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, saved[k]) for k, v in ae_dist.load(run, weights=7).state_dict().items())
    with pytest.raises(UsageError) as err:
        ae_dist.load(run, weights="best")
    assert str(err.value) == (f"error: the run has no best weights (model-best.pt missing) ({run}): "
                              "choose one it has: final, 7")
    with pytest.raises(UsageError, match="unknown weights choice 'latest'"):
        ae_dist.load(run, weights="latest")
    with pytest.raises(UsageError, match=r"not a run folder \(no config.yaml\)"):
        ae_dist.load(tmp_path)
    other = make_run(tmp_path / "other", latent_dim=5)
    (run / "model.pt").write_bytes((other / "model.pt").read_bytes())
    with pytest.raises(UsageError, match="weights do not fit the run's model"):
        ae_dist.load(run)
    (run / "model.pt").write_bytes((other / "model.pt").read_bytes()[:500])
    with pytest.raises(UsageError, match=r"model.pt cannot be loaded") as err:
        ae_dist.load(run)
    assert "\n" not in str(err.value) and str(err.value).startswith("error: ")


@pytest.mark.fast
def test_encode_writes_every_row_in_order_and_the_errors_average_to_the_test_loss(tmp_path: Path) -> None:
    from ae_dist import data, engine
    from ae_dist.dist.group import DistInfo

    run = make_run(tmp_path / "run")
    result = encode(run, tmp_path / "out", "test")
    folder = tmp_path / "out" / "test"
    test = data.load_split(load_config("digits").data, "test")
    codes, errors = np.load(folder / "codes.npy", allow_pickle=False), np.load(folder / "errors.npy", allow_pickle=False)
    assert codes.shape == (len(test), 3) and codes.dtype == np.float32 and errors.shape == (len(test),)
    assert np.array_equal(np.load(folder / "labels.npy"), test.labels.numpy())
    assert np.array_equal(np.load(folder / "index.npy"), np.arange(len(test)))
    model = result.model
    with torch.no_grad():
        assert np.allclose(codes, model.encode(test.images.float() / 255).numpy(), atol=1e-6)
    loss = engine.evaluate(model, test, 1000, load_config("digits").train, DistInfo(0, 0, 1, 1, torch.device("cpu"), None))
    assert abs(float(errors.astype(np.float64).mean()) - loss) < 1e-6
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == len(test) and manifest["split"] == "test" and manifest["weights"] == "final"
    assert manifest["weights_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    assert not (folder / ".chunks").exists() and not (folder / ".lease").exists() and (folder / "latent.png").is_file()
    before = digests(folder)
    assert encode(run, tmp_path / "out", "test").manifests["test"] == manifest  # complete: nothing rewritten
    assert digests(folder) == before


@pytest.mark.fast
def test_encode_refuses_another_runs_or_datasets_results_unless_overwrite(tmp_path: Path) -> None:
    run, other = make_run(tmp_path / "run"), make_run(tmp_path / "other", seed=1)
    encode(run, tmp_path / "out", "test")
    with pytest.raises(UsageError, match=r"output folder holds other results \(run "):
        encode(other, tmp_path / "out", "test")
    with pytest.raises(UsageError, match=r"output folder holds other results \(data_digest "):
        encode(run, tmp_path / "out", "test", ("data.name=synthetic", "data.synthetic_test=297"))
    encode(other, tmp_path / "out", "test", overwrite=True)
    assert json.loads((tmp_path / "out" / "test" / "manifest.json").read_text())["run"] == str(other.resolve())
    (tmp_path / "mine" / "test").mkdir(parents=True)
    (tmp_path / "mine" / "test" / "photo.png").write_bytes(b"x")
    with pytest.raises(UsageError, match="not empty and holds no encode output"):
        encode(run, tmp_path / "mine", "test", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine" / "test").iterdir()) == ["photo.png"]  # a user's folder: untouched


@pytest.mark.fast
def test_encode_refuses_data_of_another_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ae_dist.data import Split

    run = make_run(tmp_path / "run")
    small = Split(torch.zeros(10, 1, 14, 14, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64))
    monkeypatch.setattr(infer_run.data, "load_split", lambda cfg, part: small)
    with pytest.raises(UsageError) as err:
        encode(run, tmp_path / "out", "test")
    assert str(err.value) == ("error: the test images are 1x14x14 (CxHxW), the model takes 1x28x28 (data.name): "
                              "point data.* at images of the shape the run trained on")
    assert not (tmp_path / "out" / "test").exists()


@pytest.mark.fast
def test_a_full_disk_leaves_no_output_claimed_complete(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    with tmpfs(tmp_path / "small", "32k") as disk:
        with pytest.raises(Exception) as err:
            encode(run, disk, "train")
        assert "No space left on device" in str(err.value) and str(err.value).startswith("error: cannot write")
        assert not (disk / "train" / "manifest.json").exists()
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)  # space freed: the same call finishes
        encode(run, disk, "train")
        encode(run, tmp_path / "whole", "train")
        assert digests(disk / "train") == digests(tmp_path / "whole" / "train")


def test_kill_9_mid_encode_then_two_ranks_finish_with_the_bytes_of_one_uninterrupted_rank(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    encode(run, tmp_path / "whole", "train")  # one rank, uninterrupted
    reference = digests(tmp_path / "whole" / "train")
    out = tmp_path / "out"
    job = Job.command([encode_cmd(run, "--out", str(out))], tmp_path, [hook_env(tmp_path, "slow_chunks")])
    chunks = out / "train" / ".chunks"
    job.kill_when(lambda: chunks.is_dir() and len(list(chunks.iterdir())) >= 3, "3 chunks recorded")
    assert job.exit_codes == [-9] and not (out / "train" / "manifest.json").exists()
    done = subprocess.run(encode_cmd(run, "--out", str(out), nproc=2), cwd=REPO, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done before" in done.stdout and "2 rank(s)" in done.stdout
    assert digests(out / "train") == reference


@pytest.mark.parametrize("moment", ["start-up", "mid-way"])
def test_a_stop_signal_exits_75_and_the_same_command_finishes(tmp_path: Path, moment: str) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    extra = {"SLOW_START_S": "30"} if moment == "start-up" else {}
    job = Job.command([encode_cmd(run, "--out", str(out))], tmp_path, [hook_env(tmp_path, "slow_chunks", **extra)])
    said = "loading the model" if moment == "start-up" else "chunk rows"
    wait_for(lambda: said in job.stderr() or job.procs[0].poll() is not None, 240, said)
    job.signal(signal.SIGTERM)
    assert job.wait() == [75], job.output()
    assert not (out / "train" / "manifest.json").exists()
    done = subprocess.run(encode_cmd(run, "--out", str(out)), cwd=REPO, env=clean_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    encode(run, tmp_path / "whole", "train")
    assert digests(out / "train") == digests(tmp_path / "whole" / "train")


def test_two_encodes_into_one_folder_one_refuses(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    job = Job.command([encode_cmd(run, "--out", str(out))], tmp_path,
                      [hook_env(tmp_path, "slow_chunks", SLOW_CHUNK_S="20")])
    wait_for(lambda: "chunk rows" in job.stderr() or job.procs[0].poll() is not None, 240, "the first encode at work")
    second = subprocess.run(encode_cmd(run, "--out", str(out)), cwd=REPO, env=clean_env(tmp_path), capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 2
    assert one_clear_line(second.stderr).startswith("error: output folder is in use by ")
    job.check_running()  # the first was at work all along
    job.kill()


def test_digits_anomaly_scores_match_scikit_learn_on_the_written_files(tmp_path: Path, reference_runs) -> None:
    """The classic experiment: train on digits 1-9 (data.classes, where the data config has it), score with 0 anomalous."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    classes = ("data.classes=1,2,3,4,5,6,7,8,9",)
    run = reference_runs(classes)
    out = tmp_path / "score"
    done = subprocess.run([PYTHON, "-m", "ae_dist.score", str(run), "--anomalous-classes", "0", "--fpr", "0.05",
                           "--out", str(out), *QUIET], cwd=REPO, env=clean_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scores, flags, labels = (np.load(out / f"{name}.npy", allow_pickle=False) for name in ("scores", "flags", "labels"))
    record = json.loads((out / "threshold.json").read_text())
    auroc, auprc = roc_auc_score(labels == 0, scores), average_precision_score(labels == 0, scores)
    assert record["auroc"] == auroc and record["auprc"] == auprc
    assert f"AUROC {auroc:.4f}  AUPRC {auprc:.4f}" in done.stdout
    assert np.array_equal(flags, scores > record["threshold"]) and record["rule"] == "fpr" and record["fpr"] == 0.05
    reference = np.load(out / "reference" / "errors.npy")
    assert record["reference"]["split"] == "train" and record["reference"]["count"] == len(reference)
    assert (reference > record["threshold"]).mean() <= 0.05
    assert (out / "worst.png").is_file() and len(scores) == 297
    print(f"digits anomaly (classes {classes} trained, 0 anomalous): AUROC {record['auroc']:.4f} "
          f"(scikit-learn {auroc:.4f}), AUPRC {record['auprc']:.4f} (scikit-learn {auprc:.4f})")
    assert 0 not in np.load(out / "reference" / "labels.npy")  # the training split without 0; the test split whole
    assert 0 in labels


def test_score_names_a_folders_anomalous_class_by_its_folder_name(tmp_path: Path, photo_folder: Path) -> None:
    data = ["data.name=folder", f"data.path={photo_folder}", "data.size=16,16", "data.channels=3",
            f"data.cache_dir={tmp_path / 'cache'}", "data.classes=china,9,10"]
    trained = subprocess.run([PYTHON, "-m", "ae_dist.train", *data, "train.epochs=1", "train.batch_size=16",
                              f"run.dir={tmp_path / 'run'}", "checkpoint.every_steps=0", *QUIET], cwd=REPO, env=clean_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    score = [PYTHON, "-m", "ae_dist.score", str(tmp_path / "run"), "--percentile", "95", *QUIET]
    done = subprocess.run([*score, "--anomalous-classes", "flower"], cwd=REPO, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "score" / "threshold.json").read_text())
    manifest = json.loads(next((tmp_path / "cache").glob("*/manifest.json")).read_text())
    assert record["anomalous_classes"] == [manifest["class_names"].index("flower")] and "AUROC" in done.stdout
    wrong = subprocess.run([*score, "--anomalous-classes", "tulip"], cwd=REPO, env=clean_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and one_clear_line(wrong.stderr).startswith("error: unknown class 'tulip'")
    assert "flower" in wrong.stderr


@pytest.mark.parametrize("part", ["model", "encoder", "decoder"])
def test_export_pt2_reloads_in_a_fresh_process_with_the_same_outputs(tmp_path: Path, part: str) -> None:
    from ae_dist import data
    from ae_dist.infer import exporting

    run = make_run(tmp_path / "run")
    done = subprocess.run([PYTHON, "-m", "ae_dist.export", str(run), "--part", part], cwd=REPO, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model = infer_run.load_model(run)[0]
    inputs = exporting.inputs_for(model, part, data.load_split(load_config("digits").data, "test"))
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    fresh = subprocess.run([PYTHON, "-c", "import sys, numpy as np, torch; x = torch.from_numpy(np.load(sys.argv[1])); "
                            "np.save(sys.argv[3], torch.export.load(sys.argv[2]).module()(x).detach().numpy())",
                            str(tmp_path / "inputs.npy"), str(run / "export" / f"{part}.pt2"), str(tmp_path / "y.npy")],
                           cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    with torch.no_grad():
        expected = exporting.part_of(model, part)(inputs).numpy()
    diff = float(np.abs(np.load(tmp_path / "y.npy") - expected).max())
    assert diff <= 1e-6
    print(f"export {part}: .pt2 reloaded in a fresh process, max |diff| {diff:.3g} on {len(inputs)} test inputs")


def test_export_onnx_runs_in_onnxruntime_with_the_same_outputs(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from ae_dist import data
    from ae_dist.infer import exporting

    run = make_run(tmp_path / "run")
    model = infer_run.load_model(run)[0]
    inputs = exporting.inputs_for(model, "model", data.load_split(load_config("digits").data, "test"))
    exporting.save_onnx(model, inputs, tmp_path / "model.onnx")
    with torch.no_grad():
        diff = exporting.max_diff(model(inputs), exporting.run_onnx(tmp_path / "model.onnx", inputs))
    assert diff <= 1e-5
    print(f"export model: ONNX in onnxruntime, max |diff| {diff:.3g}")


def test_encode_logs_a_wandb_table_to_the_runs_own_wandb_run_and_wandb_trouble_fails_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "run.json").write_text(json.dumps({"wandb_run_id": "abc123xy"}))
    args = [PYTHON, "-m", "ae_dist.encode", str(run), "--split", "test", "wandb.mode=offline", "run.progress=off"]
    done = subprocess.run(args, cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = list((run / "wandb").glob("offline-run-*-abc123xy/*.wandb"))
    assert logs and b"encode/test" in logs[0].read_bytes(), done.stderr[-2000:]
    failing = subprocess.run([*args, "--out", str(tmp_path / "again")], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env=hook_env(tmp_path, "wandb_log_fails"))
    assert failing.returncode == 0, failing.stderr[-3000:]
    assert "W&B: the encode table of test failed (CommError: injected" in failing.stderr, failing.stderr[-2000:]
    assert (tmp_path / "again" / "test" / "manifest.json").is_file()


@pytest.mark.fast
def test_latent_codes_wider_than_3_are_drawn_as_their_2d_pca_projection_and_the_title_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ae_dist.monitor import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    codes = torch.randn(50, 5) * torch.tensor([9.0, 4.0, 0.1, 0.1, 0.1])  # two wide axes, three thin ones
    plots.draw_latent(codes, torch.arange(50) % 3, tmp_path / "latent.png", "codes")
    ax = drawn[0].axes[0]
    assert ax.name == "rectilinear" and ax.get_title() == "codes\n2-D PCA projection of the 5-D codes"
    shown = np.concatenate([c.get_offsets() for c in ax.collections])
    assert shown.shape == (50, 2) and shown[:, 0].std() > shown[:, 1].std() > 1
    plots.draw_latent(codes[:, :3], torch.arange(50) % 3, tmp_path / "latent.png", "codes")
    assert drawn[1].axes[0].name == "3d" and drawn[1].axes[0].get_title() == "codes"


def test_launch_encode_submits_it_as_a_job_with_one_task_per_rank(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    encode(run, tmp_path / "whole", "test")
    done = subprocess.run([PYTHON, "-m", "launch", "encode", str(run), "--executor", "local", "--tasks-per-node", "2",
                           "--wait", "--split", "test", "--chunk-rows", "100", "--batch-size", "50",
                           "--out", str(tmp_path / "out"), *QUIET], cwd=REPO, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "submitted encode job" in done.stdout and "done" in done.stdout.splitlines()[-1]
    assert digests(tmp_path / "out" / "test") == digests(tmp_path / "whole" / "test")
    logs = "".join(p.read_text() for p in (run / "submitit").glob("*_0_log.out"))
    assert "2 rank(s)" in logs
    bad = subprocess.run([PYTHON, "-m", "launch", "encode", str(run), "--executor", "local", "--split", "nope"], cwd=REPO,
                         env=clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and one_clear_line(bad.stderr).startswith("error: argument --split: invalid choice")


@pytest.mark.fast
def test_evaluate_takes_the_same_weights_choice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ae_dist import evaluate

    run = make_run(tmp_path / "run")
    assert evaluate.main([str(run), "--weights", "7"]) == 0
    assert "checkpoint step 7" in capsys.readouterr().out
    assert evaluate.main([str(run), "--weights", "ema"]) == 2
    assert capsys.readouterr().err == (f"error: the run has no ema weights (model-ema.pt missing) ({run}): "
                                       "choose one it has: final, 7\n")
