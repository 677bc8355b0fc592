"""Freeze the process (SIGSTOP) halfway through writing checkpoint FREEZE_AT_CHECKPOINT (a step),
so that a test can kill it inside the write: the temporary file holds half a checkpoint."""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import torch

STEP = int(os.environ["FREEZE_AT_CHECKPOINT"])
real_save = torch.save


def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(obj, dict) and obj.get("step") == STEP and ".tmp-" in str(getattr(f, "name", "")):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
