"""The v1 contract as loaded from the generated modules: every seedline service descriptor."""

from __future__ import annotations

import importlib
import pkgutil

import seedline
from google.protobuf import descriptor


def load_services() -> list[descriptor.ServiceDescriptor]:
    """Import every generated ``seedline.*_pb2`` module and return its services, sorted by name."""
    services: dict[str, descriptor.ServiceDescriptor] = {}
    for info in pkgutil.walk_packages(seedline.__path__, prefix="seedline."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            file_desc: descriptor.FileDescriptor = module.DESCRIPTOR
            for service in file_desc.services_by_name.values():
                services[service.full_name] = service
    return [services[name] for name in sorted(services)]
