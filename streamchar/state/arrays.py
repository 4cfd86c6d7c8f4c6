"""Arrays in the session store: self-describing .npy bytes, so any replica reads them back exactly."""

from __future__ import annotations

import io

import numpy as np


def pack(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def unpack(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
