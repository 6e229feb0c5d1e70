"""Generate the Python client's message classes and sync stubs with betterproto2 (``make gen``).

The output goes to ``clients/python/src/seedline_client/_generated/`` (committed, never edited).

betterproto2-compiler is a protoc plugin (``protoc-gen-python_betterproto2``), but it cannot be
handed our contract by protoc directly: it reads every file's comments and fails on a file
without ``source_code_info``, which ``buf/validate/validate.proto`` lacks (it is read from the
vendored descriptor set, see third_party/README.md). So this module speaks the plugin protocol
itself: it builds the ``CodeGeneratorRequest`` from a contract image, and

* keeps only the files whose *types* the client needs: ``seedline.*`` and everything their
  fields and methods reference, plus ``google/rpc`` status and details (for errors and
  ``RetryInfo``). Files imported only for their options (``buf.validate``, ``google.api``
  annotations, ``google/protobuf/descriptor.proto``) are dropped, and so are the imports of them;
* gives every remaining file without source info an empty one.

Options: ``client_generation=sync`` (grpcio ``Channel.unary_unary`` stubs), no server code.
The plugin formats its output with ``ruff`` from ``PATH``: ours comes first, and ruff is
pinned exactly in pyproject.toml like the generator, so gen-check stays stable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "clients/python/src/seedline_client/_generated"
OPTIONS = "client_generation=sync,server_generation=none"
# The google.rpc error types: the hand-written client decodes them from grpc-status-details-bin,
# and Envoy renders them as JSON (tools/gen.py adds them to its descriptor set and to the image).
DETAILS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def _referenced(file: descriptor_pb2.FileDescriptorProto) -> Iterable[str]:
    """Fully qualified names (leading dot) of the types a file's fields and methods use."""

    def walk(messages: Iterable[descriptor_pb2.DescriptorProto]) -> Iterable[str]:
        for message in messages:
            for field in message.field:
                if field.type_name:
                    yield field.type_name
            yield from walk(message.nested_type)

    yield from walk(file.message_type)
    for service in file.service:
        for method in service.method:
            yield method.input_type
            yield method.output_type


def _defined(file: descriptor_pb2.FileDescriptorProto) -> Iterable[str]:
    prefix = f".{file.package}" if file.package else ""

    def walk(scope: str, messages: Iterable[descriptor_pb2.DescriptorProto]) -> Iterable[str]:
        for message in messages:
            name = f"{scope}.{message.name}"
            yield name
            yield from (f"{name}.{enum.name}" for enum in message.enum_type)
            yield from walk(name, message.nested_type)

    yield from (f"{prefix}.{enum.name}" for enum in file.enum_type)
    yield from walk(prefix, file.message_type)


def needed_files(files: list[descriptor_pb2.FileDescriptorProto]) -> set[str]:
    """Our files, the google.rpc error files and every file whose types they use, transitively."""
    owner = {name: f.name for f in files for name in _defined(f)}
    by_name = {f.name: f for f in files}
    missing = [root for root in DETAILS if root not in by_name]
    if missing:
        raise ValueError(f"the contract image lacks {missing}: build it with gen_client.DETAILS")
    todo = [f.name for f in files if f.package.startswith("seedline.")] + list(DETAILS)
    needed: set[str] = set()
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(owner[t] for t in _referenced(by_name[name]))
    return needed


def request(contract: Path) -> plugin_pb2.CodeGeneratorRequest:
    """The plugin request for the client: the needed files, in dependency order."""
    image = descriptor_pb2.FileDescriptorSet.FromString(contract.read_bytes())
    files = list(image.file)
    needed = needed_files(files)
    req = plugin_pb2.CodeGeneratorRequest(parameter=OPTIONS)
    for file in files:  # protoc writes an image in dependency order; keep it
        if file.name not in needed:
            continue
        kept = [dep for dep in file.dependency if dep in needed]
        del file.dependency[:]
        file.dependency.extend(kept)
        del file.public_dependency[:]
        del file.weak_dependency[:]
        if not file.HasField("source_code_info"):
            file.source_code_info.SetInParent()
        req.proto_file.append(file)
        req.file_to_generate.append(file.name)
    return req


def generate_client(contract: Path, bin_dir: Path) -> None:
    """Regenerate the client's ``_generated`` package from a contract image (with source info)."""
    plugin = bin_dir / "protoc-gen-python_betterproto2"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(
        [str(plugin)], input=request(contract).SerializeToString(), capture_output=True, env=env, check=True
    )
    response = plugin_pb2.CodeGeneratorResponse.FromString(done.stdout)
    if response.error:
        raise RuntimeError(f"betterproto2 failed: {response.error}")
    shutil.rmtree(OUT, ignore_errors=True)
    for file in response.file:
        path = OUT / file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file.content)
