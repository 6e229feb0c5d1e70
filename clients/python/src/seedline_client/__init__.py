"""Typed Python client for Seedline: betterproto2 messages, grpcio stubs, auth, retries, paging.

    from seedline_client import BearerToken, connect, items
    from seedline_client.api import license_v1

    with connect("localhost:50051", credentials=BearerToken(jwt)) as client:
        for lic in items(client.licenses.list_licenses, license_v1.ListLicensesRequest(),
                         lambda page: page.licenses):
            print(lic.name)

See docs/client.md.
"""

from seedline_client.auth import ApiKey, BearerToken, Credentials, SessionToken, new_request_id
from seedline_client.client import Client, connect
from seedline_client.errors import SeedlineError, from_rpc_error
from seedline_client.paging import items, pages
from seedline_client.retry import RetryPolicy

__all__ = [
    "ApiKey",
    "BearerToken",
    "Client",
    "Credentials",
    "RetryPolicy",
    "SeedlineError",
    "SessionToken",
    "connect",
    "from_rpc_error",
    "items",
    "new_request_id",
    "pages",
]
