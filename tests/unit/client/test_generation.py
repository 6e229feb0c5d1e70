"""tools/gen_client.py hands betterproto2 only the files whose types the client needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import tools


def test_the_plugin_request_keeps_type_files_and_drops_option_only_imports(tmp_path: Path) -> None:
    gen = tools.load("gen")
    image = tmp_path / "contract.binpb"
    gen.image(image, *gen.DETAILS)
    request = tools.load("gen_client").request(image)
    names = list(request.file_to_generate)
    assert [f.name for f in request.proto_file] == names
    assert "seedline/license/v1/license.proto" in names
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto"} <= set(names)
    assert "google/protobuf/timestamp.proto" in names  # a field type
    assert "google/api/httpbody.proto" in names  # a method's response type
    for option_only in (
        "buf/validate/validate.proto",
        "google/api/annotations.proto",
        "google/protobuf/descriptor.proto",
    ):
        assert option_only not in names
    kept = set(names)
    for file in request.proto_file:
        assert file.HasField("source_code_info"), file.name
        assert set(file.dependency) <= kept, file.name
        # Dependency order: a file comes after everything it imports.
        assert all(names.index(dep) < names.index(file.name) for dep in file.dependency)
    assert request.parameter == "client_generation=sync,server_generation=none"


def test_an_image_without_the_error_types_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "contract.binpb"
    tools.load("gen").image(image)
    with pytest.raises(ValueError, match="google/rpc"):
        tools.load("gen_client").request(image)
