"""What a person sees: on a real terminal (a pty from `script`) the epoch lines stand on their own lines
above the progress bar, never glued onto it; in plain-line mode each line says the rate and the time left."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ae_dist.monitor.console import Progress, write
from tests.helpers.commands import PYTHON, REPO, clean_env

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EPOCH = re.compile(r"epoch (\d)/2, loss: [\d.]+, test loss: [\d.]+ \([\d.]+x PCA-3\), [\d,]+ samples/s")


def rendered(raw: str) -> list[str]:
    """The screen's lines as a terminal draws them: '\\r' goes back to the line's start and overwrites."""
    lines, line, column = [], [], 0
    for char in ANSI.sub("", raw):
        if char == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        elif char == "\r":
            column = 0
        else:
            line[column:column + 1] = [char]
            column += 1
    return [*lines, "".join(line).rstrip()]


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script (util-linux)")
def test_epoch_lines_stand_above_the_bar_on_a_terminal(tmp_path: Path) -> None:
    train = [PYTHON, "-m", "ae_dist.train", "--config", "digits", f"run.dir={tmp_path / 'run'}", "train.epochs=2",
             "wandb.mode=disabled", "train.threads=1"]  # run.progress=auto: a bar, since this is a terminal
    result = subprocess.run(["script", "-q", "-e", "-c", f"stty cols 120 rows 40; exec {shlex.join(train)}", "/dev/null"],
                            cwd=tmp_path, env=clean_env(tmp_path) | {"PYTHONPATH": str(REPO)}, capture_output=True,
                            timeout=300)
    raw = ANSI.sub("", result.stdout.decode("utf-8", "replace"))
    screen = [line for line in rendered(raw) if line]
    assert result.returncode == 0, "\n".join(screen[-30:])
    epochs = [index for index, line in enumerate(screen) if EPOCH.fullmatch(line)]  # whole lines, nothing glued on
    assert [EPOCH.fullmatch(screen[i]).group(1) for i in epochs] == ["1", "2"], "\n".join(screen)
    assert re.match(r"\s*100%\|.*\| 46/46 ", screen[epochs[1] + 1]) and screen[-2].startswith("done: "), screen
    assert re.fullmatch(r"test loss [\d.]+ is [\d.]+x PCA-3's [\d.]+: the autoencoder (beats|does NOT beat) PCA .*", screen[-1])
    first = raw.index("epoch 1/2,")
    drawn = [(match.start(), int(match.group(1))) for match in re.finditer(r"\| (\d+)/46 ", raw)]
    assert any(first < at and step > 23 for at, step in drawn)  # the bar went on below the epoch line


@pytest.mark.fast
def test_plain_lines_say_rate_and_time_left(capsys: pytest.CaptureFixture) -> None:
    progress = Progress("lines", total=100, enabled=True, every=10)
    progress.start_at(20)
    progress.started = time.perf_counter() - 10.0  # 10 s since this start
    progress.update(60, 2, 0.5)
    write("epoch 2/5, ...")
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"step 60/100 epoch 2 loss 0\.5000 \(0:10, 4\.0 steps/s, ETA 0:10\)", out[0]), out
    assert out[1] == "epoch 2/5, ..."
