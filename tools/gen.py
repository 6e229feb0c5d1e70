"""Generate everything under gen/ from proto/ (``make gen``), or a contract image for buf.

Usage:
    python tools/gen.py all            regenerate gen/ (Python, typed stubs, descriptor, OpenAPI)
                                       and the client's generated code (see tools/gen_client.py)
    python tools/gen.py image OUT      write a FileDescriptorSet image of proto/ (with imports
                                       and source info) for ``buf lint`` / ``buf breaking``

protoc is the one bundled with grpcio-tools, pinned in pyproject.toml to the protobuf runtime we
ship, so the generated code and the runtime always agree. ``buf/validate/validate.proto`` comes
from the vendored descriptor set (see third_party/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools
from gen_client import DETAILS, generate_client

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party"
GEN = ROOT / "gen"
VALIDATE_SET = THIRD_PARTY / "buf/validate/validate.protoset"
WKT = Path(grpc_tools.__file__).parent / "_proto"
BIN = Path(sys.executable).parent


def _sources() -> list[str]:
    return sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))


def _protoc(*args: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{THIRD_PARTY}",
        f"-I{WKT}",
        f"--descriptor_set_in={VALIDATE_SET}",
        *args,
    ]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def image(out: Path, *extra: str) -> None:
    """Write the contract (plus ``extra`` files) as a FileDescriptorSet with imports and source info."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _protoc("--include_imports", "--include_source_info", f"--descriptor_set_out={out}", *_sources(), *extra)


def _touch_packages(root: Path) -> None:
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        if directory.name == "__pycache__":
            continue
        (directory / "__init__.py").touch()
    (root / "py.typed").touch()


def generate() -> None:
    """Regenerate gen/ from scratch."""
    for stale in ("seedline", "buf"):
        shutil.rmtree(GEN / stale, ignore_errors=True)
    GEN.mkdir(exist_ok=True)
    sources = _sources()
    plugin_args: list[str] = []
    openapi = ROOT / "tools/protoc-gen-openapi"
    if openapi.exists():
        plugin_args = [f"--plugin=protoc-gen-openapi={openapi}", f"--openapi_out={GEN}"]
    _protoc(
        f"--python_out={GEN}",
        f"--grpc_python_out={GEN}",
        f"--mypy_out={GEN}",
        f"--mypy_grpc_out={GEN}",
        *plugin_args,
        *sources,
        "buf/validate/validate.proto",
    )
    # Envoy's gRPC-JSON transcoder loads this: every service with all of its imports.
    # The google.rpc detail types are listed explicitly so Envoy can render error details as JSON.
    _protoc("--include_imports", f"--descriptor_set_out={GEN / 'seedline.protoset'}", *sources, *DETAILS)
    _touch_packages(GEN / "seedline")
    _touch_packages(GEN / "buf")
    # The Python client's messages and stubs (betterproto2), from an image with source info.
    with tempfile.TemporaryDirectory() as scratch:
        contract = Path(scratch) / "contract.binpb"
        image(contract, *DETAILS)
        generate_client(contract, BIN)


def main(argv: list[str]) -> int:
    """Entry point."""
    if len(argv) >= 2 and argv[1] == "all":
        generate()
        return 0
    if len(argv) == 3 and argv[1] == "image":
        image(Path(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
