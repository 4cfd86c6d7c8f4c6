"""Generate the Python gRPC stubs from proto/ into streamchar/v1/ (the one way they are made).

Usage: python scripts/gen_proto.py [--check]
--check regenerates into a temporary folder and fails if the committed stubs differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("streamchar") / "v1"


def generate(out_root: Path) -> list[Path]:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out_dir = out_root / PACKAGE_DIR
    (out_dir / "__init__.py").write_text('"""Generated gRPC stubs (scripts/gen_proto.py); do not edit."""\n')
    return sorted(out_dir.iterdir())


def _content(path: Path) -> list[str]:
    """A stub's lines less grpcio-tools' version stamp: a newer patch release of grpcio-tools
    changes only GRPC_GENERATED_VERSION, and the committed stubs (the minimum grpcio they ask for
    is pinned in pyproject.toml) stay correct, so that line alone does not make them stale."""
    return [line for line in path.read_text().splitlines()
            if not line.startswith("GRPC_GENERATED_VERSION = ")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        target = ROOT / PACKAGE_DIR
        if args.check:
            stale = [f.name for f in files if not (target / f.name).exists()
                     or _content(f) != _content(target / f.name)]
            if stale:
                print(f"stubs out of date: {', '.join(stale)}; run scripts/gen_proto.py", file=sys.stderr)
                return 1
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, target / f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
