"""Who is calling and on behalf of which request: passed from the transport to every use case."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """An authenticated (or anonymous) caller.

    Attributes:
        name: stable principal name, e.g. ``partners/acme`` or ``anonymous``.
        kind: how it was established: ``PARTNER_CERTIFICATE``, ``ANONYMOUS``, ...
        detail: what established it (e.g. the certificate's SAN URI).

    """

    name: str
    kind: str
    detail: str = ""


ANONYMOUS = Principal(name="anonymous", kind="ANONYMOUS")


@dataclass(frozen=True)
class CallContext:
    """Per-call facts a use case needs: the caller and the RPC."""

    principal: Principal
    method: str
    request_id: str = ""


@dataclass(frozen=True)
class Signature:
    """An e-signature accepted for a critical operation (identity re-proven by the transport).

    Attributes:
        signer: the principal that signed.
        meaning: ``seedline.type.v1.SignatureMeaning`` number.
        reason: the signer's stated reason.

    """

    signer: str
    meaning: int
    reason: str
