"""Regenerate ``serve/v1``'s Python code from ``serve/v1/personalization.proto``.

The recorded command (run from the repository root)::

    python tools/gen_proto.py            # writes serve/v1/personalization_pb2{,_grpc}.py{,i}
    python tools/gen_proto.py --out DIR  # writes the same files under DIR (the test compares)

protoc sees the folder under its installed name (``-Itailored/serve/v1=serve/v1``), so the
generated modules import each other as ``tailored.serve.v1``. grpcio-tools is pinned in
pyproject's dev extras: another version writes different bytes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "personalization.proto"
GENERATED = (
    "personalization_pb2.py",
    "personalization_pb2.pyi",
    "personalization_pb2_grpc.py",
)


def generate(out: Path) -> list[Path]:
    """Run protoc over the .proto and write the generated files into ``out``."""
    from grpc_tools import protoc  # dev dependency, imported only here

    src = ROOT / "serve" / "v1"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-Itailored/serve/v1={src}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"tailored/serve/v1/{PROTO}",
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {src / PROTO}")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out / name
            shutil.copyfile(Path(tmp) / "tailored" / "serve" / "v1" / name, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "serve" / "v1")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
