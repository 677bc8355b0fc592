"""Every packaged experiment against its PCA baseline: the final ratio and the wall time of each.

    python -m benchmarks.config_ratios                      # digits (as the README runs it), digits_conv, images
    python -m benchmarks.config_ratios --work /var/tmp/ae-ratios --only digits

- digits: the README's quickstart as it is written, ``torchrun --standalone --nproc_per_node=2``;
- digits_conv: one process;
- images: one process on 2,000 64x64 tiles of scikit-learn's two photographs (half JPEG, half
  PNG, 10 class folders), ``--config images data.path=TILES``;
- default: the seed's FashionMNIST experiment, when torchvision's files are in ``data/FashionMNIST/raw``
  (it downloads nothing; without them it says so and moves on).

Each line gives the run's own verdict line (test loss, its ratio to PCA with ``model.latent_dim``
components) and the command's wall time, with the machine's load beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data_prep import make_tiles

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def verdict(output: str) -> str:
    lines = [line for line in output.splitlines() if "PCA-" in line and line.startswith("test loss")]
    return lines[-1] if lines else "no verdict line: " + output.strip().splitlines()[-1][:200]


def run(name: str, command: list[str]) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    one, _, _ = os.getloadavg()
    print(f"{name:12} {seconds:6.1f} s  {verdict(done.stdout + done.stderr)}  (load {one:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for runs, tiles and the prepared cache (default: a temp folder)")
    parser.add_argument("--only", default="digits,digits_conv,images,default")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        common = ["wandb.mode=disabled", "run.progress=off"]
        print(f"{os.cpu_count()} cores; each run's final line")
        if "digits" in wanted:
            run("digits", [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ae_dist.train",
                           "--config", "configs/digits.yaml", f"run.dir={work / 'digits'}", *common])
        if "digits_conv" in wanted:
            run("digits_conv", [PY, "-m", "ae_dist.train", "--config", "digits_conv", f"run.dir={work / 'digits_conv'}",
                                *common])
        if "images" in wanted:
            tiles = make_tiles(work / "tiles", 2000)
            run("images", [PY, "-m", "ae_dist.train", "--config", "images", f"data.path={tiles}",
                           f"data.cache_dir={work / 'prepared'}", f"run.dir={work / 'images'}", *common])
        if "default" in wanted:
            if (REPO / "data" / "FashionMNIST" / "raw").is_dir():
                run("default", [PY, "-m", "ae_dist.train", "data.download=false", f"run.dir={work / 'default'}", *common])
            else:
                print("default      skipped: FashionMNIST's files are not in data/FashionMNIST/raw")


if __name__ == "__main__":
    main()
