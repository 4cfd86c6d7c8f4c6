"""Render the characters the gateway's page offers: held-out (test split) identities of the corpus.

    .venv/bin/python scripts/page_characters.py            # -> streamchar/assets/characters/*.png

Test-split identities never appear in training, so choosing one shows the model on a face it has not
seen, as an uploaded image would. 128 px PNGs (the gateway normalises a reference to the model's 64 px).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.characters import CharacterParams, reference_image
from training.data.corpus import CorpusConfig, pool, stable_hash

OUT = Path(__file__).resolve().parents[1] / "streamchar" / "assets" / "characters"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    config = CorpusConfig()
    args.out.mkdir(parents=True, exist_ok=True)
    for identity in pool("identity", "test", config)[:args.count]:
        params = CharacterParams.from_seed(identity, stable_hash("identity", identity))  # as the corpus draws it
        image = reference_image(params, args.size)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=True)
        path = args.out / f"character-{identity:03d}.png"
        path.write_bytes(buf.getvalue())
        print(f"{path} ({len(buf.getvalue())} bytes)")


if __name__ == "__main__":
    main()
