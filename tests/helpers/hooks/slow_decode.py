"""Each image of a folder preparation takes at least SLOW_DECODE_S seconds more (default 0.2): time to kill
the preparation while it is surely writing rows. Each decode says so on stderr (`decoded N`). With
DECODE_AFTER=PATH, the second image waits until PATH exists (at most 300 s): the preparation is held
mid-way until a test lets it go."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from ae_dist.data import images

SLOW_DECODE_S = float(os.environ.get("SLOW_DECODE_S", "0.2"))
DECODE_AFTER = os.environ.get("DECODE_AFTER", "")
real_decode = images.decode
calls = itertools.count(1)


def decode(*args, **kwargs):
    time.sleep(SLOW_DECODE_S)
    result = real_decode(*args, **kwargs)
    call = next(calls)
    os.write(2, f"decoded {call}\n".encode())
    deadline = time.monotonic() + 300
    while call == 1 and DECODE_AFTER and not Path(DECODE_AFTER).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


images.decode = decode
