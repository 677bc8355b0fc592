"""Encode chunks take at least SLOW_CHUNK_S seconds (default 0.3) each and say so on stderr (`chunk rows A-B`);
with SLOW_START_S, loading the model does too, after saying `loading the model` (a stop during start-up)."""

from __future__ import annotations

import os
import time

from ae_dist.infer import passes
from ae_dist.infer import run as infer_run

SLOW_CHUNK_S = float(os.environ.get("SLOW_CHUNK_S", "0.3"))
SLOW_START_S = float(os.environ.get("SLOW_START_S", "0"))
real_rows, real_load = passes.encode_rows, infer_run.load_model


def encode_rows(model, images, *args, **kwargs):
    os.write(2, f"chunk rows {len(images)}\n".encode())
    time.sleep(SLOW_CHUNK_S)
    return real_rows(model, images, *args, **kwargs)


def load_model(*args, **kwargs):
    if SLOW_START_S:
        os.write(2, b"loading the model\n")
        time.sleep(SLOW_START_S)
    return real_load(*args, **kwargs)


passes.encode_rows = encode_rows
infer_run.load_model = load_model
