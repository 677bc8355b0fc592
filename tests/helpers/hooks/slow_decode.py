"""Each image of a folder preparation takes at least SLOW_DECODE_S seconds more (default 0.2): time to kill
the preparation while it is surely writing rows. Each decode says so on stderr (`decoded N`)."""

from __future__ import annotations

import itertools
import os
import time

from ae_dist.data import images

SLOW_DECODE_S = float(os.environ.get("SLOW_DECODE_S", "0.2"))
real_decode = images.decode
calls = itertools.count(1)


def decode(*args, **kwargs):
    time.sleep(SLOW_DECODE_S)
    result = real_decode(*args, **kwargs)
    os.write(2, f"decoded {next(calls)}\n".encode())
    return result


images.decode = decode
