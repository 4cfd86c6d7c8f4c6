"""What a session is created with: validated reference image, voice and options, kept in the store."""

from __future__ import annotations

import io
import json
import secrets
import uuid
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from streamchar.errors import InvalidInput
from streamchar.state import arrays
from streamchar.state.store import SessionStore

MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096


def new_session_id() -> str:
    return uuid.uuid4().hex


def decode_reference(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes → uint8 [size,size,3] RGB, centre-cropped; InvalidInput if it is not one."""
    if not data:
        raise InvalidInput("reference_image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(f"reference_image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise InvalidInput(f"reference_image is {img.width}x{img.height}; the limit is "
                                   f"{MAX_IMAGE_PIXELS} pixels")
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
        raise InvalidInput(f"reference_image is not a decodable image ({type(e).__name__})") from None
    side = min(rgb.width, rgb.height)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8)


# Store fields of a session's metadata. The options are JSON (voice, seed, realtime); the
# orchestrator reads the voice from them (streamchar/engine/orchestration.py).
F_OPTIONS, F_REFERENCE = "meta.options", "meta.reference"


@dataclass(frozen=True)
class SessionMeta:
    session_id: str
    voice: str
    seed: int
    realtime: bool
    reference: np.ndarray  # uint8 [H,W,3]

    @classmethod
    def new(cls, reference: np.ndarray, voice: str = "", seed: int = 0, realtime: bool = False,
            session_id: str | None = None) -> SessionMeta:
        return cls(session_id or new_session_id(), voice, seed or secrets.randbits(63), realtime, reference)

    async def create(self, store: SessionStore) -> None:
        options = {k: v for k, v in asdict(self).items() if k not in ("session_id", "reference")}
        await store.create(self.session_id, {F_OPTIONS: json.dumps(options).encode(),
                                             F_REFERENCE: arrays.pack(self.reference)})

    @classmethod
    async def load(cls, store: SessionStore, session_id: str) -> SessionMeta:
        raw = await store.load(session_id, [F_OPTIONS, F_REFERENCE])
        if raw[F_OPTIONS] is None or raw[F_REFERENCE] is None:
            raise InvalidInput(f"session {session_id!r} is incomplete in the store")
        return cls(session_id=session_id, reference=arrays.unpack(raw["meta.reference"]),
                   **json.loads(raw[F_OPTIONS]))
