"""Development PKI for the partner edge: a private CA, Envoy's server certificate, partner client certs.

Partners reach Seedline through Envoy over mutual TLS. A partner's identity is the SPIFFE-style
URI in its client certificate's subjectAltName, ``spiffe://seedline.dev/partner/<partner>``;
Envoy only accepts client certificates signed by the Seedline CA that carry a URI under
:data:`PARTNER_URI_PREFIX`, and forwards the verified URI to the gRPC server in the
``x-forwarded-client-cert`` header.

Everything here is for local development and tests: keys are unencrypted ECDSA P-256 files
(written 0600), certificates are SHA-256 signed. :func:`write_dev_pki` is idempotent so that
restarting ``make dev`` keeps the same CA and certificates as long as they are still valid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "PARTNER_URI_PREFIX",
    "DevPki",
    "issue_client_cert",
    "partner_uri",
    "write_ca",
    "write_dev_pki",
]

PARTNER_URI_PREFIX = "spiffe://seedline.dev/partner/"
"""Every partner identity (the URI SAN of its client certificate) starts with this prefix."""

CA_VALIDITY = dt.timedelta(days=3650)
"""Lifetime of a CA certificate (10 years)."""

LEAF_VALIDITY = dt.timedelta(days=825)
"""Lifetime of server and client certificates (825 days, the CA/Browser Forum's old maximum)."""

_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between processes and machines
_RENEW_BEFORE = dt.timedelta(days=1)  # re-issue instead of keeping something about to expire
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ORGANIZATION = "Seedline (development)"


@dataclass(frozen=True)
class DevPki:
    """Paths of the files written by :func:`write_dev_pki`.

    Attributes:
        directory: The directory holding all files.
        ca_cert: The CA certificate (PEM); Envoy trusts client certificates signed by it and
            clients verify Envoy's server certificate against it.
        ca_key: The CA private key (PEM, mode 0600).
        server_cert: Envoy's server certificate (PEM).
        server_key: Envoy's server private key (PEM, mode 0600).
        partner_cert: The partner's client certificate (PEM).
        partner_key: The partner's client private key (PEM, mode 0600).
        partner_uri: The partner's identity, the URI SAN of ``partner_cert``.

    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    partner_cert: Path
    partner_key: Path
    partner_uri: str


def partner_uri(partner: str) -> str:
    """Return the identity URI of a partner.

    Args:
        partner: The partner's short name, e.g. ``acme``.

    Returns:
        ``spiffe://seedline.dev/partner/<partner>``.

    Raises:
        ValueError: If ``partner`` is not 1-64 characters of ``[A-Za-z0-9._-]`` starting with a
            letter or digit.

    """
    _check_name(partner)
    return f"{PARTNER_URI_PREFIX}{partner}"


def write_dev_pki(
    directory: Path,
    *,
    server_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    partner: str = "acme",
) -> DevPki:
    """Create (or reuse) the development CA, Envoy's server certificate and a partner certificate.

    Writes ``ca.pem``, ``ca-key.pem``, ``server.pem``, ``server-key.pem``,
    ``partner-<partner>.pem`` and ``partner-<partner>-key.pem`` into ``directory``. Existing files
    are kept while they are usable: the CA while it is valid and matches its key; a leaf
    certificate while it is valid, signed by that CA, matches its key and (for the server) names
    exactly ``server_hosts``. Anything else is (re)issued, so repeated calls do not churn
    certificates.

    Args:
        directory: Where to write the files; created if missing.
        server_hosts: DNS names and IP addresses Envoy's server certificate is valid for.
        partner: The partner's short name; its identity becomes
            ``spiffe://seedline.dev/partner/<partner>``.

    Returns:
        The paths of the files and the partner's identity URI.

    Raises:
        ValueError: If ``server_hosts`` is empty or ``partner`` is not a valid name.

    """
    if not server_hosts:
        raise ValueError("server_hosts must name at least one host")
    uri = partner_uri(partner)
    directory.mkdir(parents=True, exist_ok=True)
    pki = DevPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        partner_cert=directory / f"partner-{partner}.pem",
        partner_key=directory / f"partner-{partner}-key.pem",
        partner_uri=uri,
    )

    ca = _load_valid_ca(pki.ca_cert, pki.ca_key)
    if ca is None:
        write_ca(directory, "Seedline Dev CA")
        ca = _load_valid_ca(pki.ca_cert, pki.ca_key)
        if ca is None:  # pragma: no cover - we just wrote it
            raise RuntimeError(f"could not create a usable CA in {directory}")
    ca_cert, ca_key = ca

    server_sans = _host_sans(server_hosts)
    existing = _load_valid_leaf(pki.server_cert, pki.server_key, ca_cert)
    if existing is None or _sans(existing) != set(server_sans):
        _issue(
            ca_cert,
            ca_key,
            pki.server_cert,
            pki.server_key,
            common_name=server_hosts[0],
            sans=server_sans,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        )

    existing = _load_valid_leaf(pki.partner_cert, pki.partner_key, ca_cert)
    if existing is None or _sans(existing) != {x509.UniformResourceIdentifier(uri)}:
        issue_client_cert(pki.ca_cert, pki.ca_key, directory, partner)
    return pki


def write_ca(out_dir: Path, common_name: str) -> tuple[Path, Path]:
    """Create a new self-signed CA, replacing ``ca.pem`` / ``ca-key.pem`` in ``out_dir``.

    Tests use this to make a *foreign* CA whose client certificates Envoy must refuse.

    Args:
        out_dir: Where to write ``ca.pem`` and ``ca-key.pem``; created if missing.
        common_name: The CA's subject common name.

    Returns:
        The paths of the CA certificate and its private key.

    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = out_dir / "ca.pem", out_dir / "ca-key.pem"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def issue_client_cert(
    ca_cert_path: Path,
    ca_key_path: Path,
    out_dir: Path,
    name: str,
    *,
    san_uri: str | None = None,
) -> tuple[Path, Path]:
    """Issues a partner client certificate signed by the given CA.

    The certificate has ``CN=<name>``, the clientAuth extended key usage and the URI SAN
    ``spiffe://seedline.dev/partner/<name>`` (or ``san_uri``). It is written to
    ``partner-<name>.pem`` with its key in ``partner-<name>-key.pem``, replacing existing files.

    Args:
        ca_cert_path: The issuing CA's certificate (PEM).
        ca_key_path: The issuing CA's private key (PEM, unencrypted).
        out_dir: Where to write the certificate and key; created if missing.
        name: The partner's short name (1-64 of ``[A-Za-z0-9._-]``).
        san_uri: Overrides the URI SAN, e.g. to test that Envoy refuses identities outside
            ``spiffe://seedline.dev/partner/``.

    Returns:
        The paths of the client certificate and its private key.

    Raises:
        ValueError: If ``name`` is invalid or the CA key is not an EC key.

    """
    uri = san_uri if san_uri is not None else partner_uri(name)
    _check_name(name)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = _load_ec_key(ca_key_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"partner-{name}.pem", out_dir / f"partner-{name}-key.pem"
    _issue(
        ca_cert,
        ca_key,
        cert_path,
        key_path,
        common_name=name,
        sans=[x509.UniformResourceIdentifier(uri)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return cert_path, key_path


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cert_path: Path,
    key_path: Path,
    *,
    common_name: str,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid name {name!r}: use 1-64 characters of [A-Za-z0-9._-]")


def _host_sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return sans


def _sans(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return set(ext.value)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _usable(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    now = _now()
    return (
        cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc > now + _RENEW_BEFORE
        and cert.public_key() == key.public_key()
    )


def _load_valid_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """Return the CA in the files if both exist, parse, match and the CA is valid; else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = _load_ec_key(key_path)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    if not constraints.ca or not _usable(cert, key):
        return None
    return cert, key


def _load_valid_leaf(cert_path: Path, key_path: Path, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """Return the leaf certificate if it is valid, matches its key and was signed by ``ca_cert``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = _load_ec_key(key_path)
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return None
    return cert if _usable(cert, key) else None


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key")
    return key


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, mode=0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a temporary file created with ``mode`` and renames it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # exact mode whatever the umask or a stale temporary file had
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
