"""The development PKI: chain, SANs, EKUs, key modes, idempotency, foreign CAs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from seedline_server import certs
from seedline_server.certs import (
    PARTNER_URI_PREFIX,
    DevPki,
    issue_client_cert,
    write_ca,
    write_dev_pki,
)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verifier(ca: Path) -> PolicyBuilder:
    return PolicyBuilder().store(Store([_load(ca)]))


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return write_dev_pki(tmp_path / "pki")


def test_writes_the_named_files_with_private_keys_0600(pki: DevPki) -> None:
    assert pki.partner_uri == "spiffe://seedline.dev/partner/acme"
    names = {p.name for p in pki.directory.iterdir()}
    assert names == {
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "partner-acme.pem",
        "partner-acme-key.pem",
    }
    for key in (pki.ca_key, pki.server_key, pki.partner_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP256R1)


def test_ca_is_a_ten_year_p256_signing_ca(pki: DevPki) -> None:
    ca = _load(pki.ca_cert)
    assert ca.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3651)
    ca.verify_directly_issued_by(ca)


def test_server_cert_chains_to_the_ca_for_each_host(pki: DevPki) -> None:
    server = _load(pki.server_cert)
    verifier = _verifier(pki.ca_cert)
    verifier.build_server_verifier(x509.DNSName("localhost")).verify(server, [])
    verifier.build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1"))).verify(server, [])
    with pytest.raises(VerificationError):
        verifier.build_server_verifier(x509.DNSName("example.com")).verify(server, [])

    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert isinstance(server.signature_hash_algorithm, hashes.SHA256)
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=826)


def test_partner_cert_is_a_client_cert_naming_the_partner(pki: DevPki) -> None:
    partner = _load(pki.partner_cert)
    verified = _verifier(pki.ca_cert).build_client_verifier().verify(partner, [])
    assert verified.subjects == [x509.UniformResourceIdentifier("spiffe://seedline.dev/partner/acme")]

    assert partner.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme"
    eku = partner.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not partner.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # A client certificate cannot serve as a server certificate.
    with pytest.raises(VerificationError):
        _verifier(pki.ca_cert).build_server_verifier(x509.DNSName("localhost")).verify(partner, [])


def test_second_call_keeps_every_file(tmp_path: Path) -> None:
    first = write_dev_pki(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = write_dev_pki(tmp_path)
    assert second == first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_new_hosts_reissue_only_the_server_cert(tmp_path: Path) -> None:
    first = write_dev_pki(tmp_path)
    ca, partner = first.ca_cert.read_bytes(), first.partner_cert.read_bytes()
    server = first.server_cert.read_bytes()
    write_dev_pki(tmp_path, server_hosts=("edge.seedline.test", "::1"))
    assert first.ca_cert.read_bytes() == ca
    assert first.partner_cert.read_bytes() == partner
    assert first.server_cert.read_bytes() != server
    _verifier(first.ca_cert).build_server_verifier(x509.DNSName("edge.seedline.test")).verify(
        _load(first.server_cert), []
    )


def test_another_partner_shares_the_ca(tmp_path: Path) -> None:
    acme = write_dev_pki(tmp_path)
    globex = write_dev_pki(tmp_path, partner="globex")
    assert globex.ca_cert.read_bytes() == acme.ca_cert.read_bytes()
    assert globex.partner_uri == f"{PARTNER_URI_PREFIX}globex"
    assert acme.partner_cert.exists()
    assert globex.partner_cert.exists()


def test_expired_ca_is_replaced_with_everything_it_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_dev_pki(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_now = certs._now
    monkeypatch.setattr(certs, "_now", lambda: real_now() + dt.timedelta(days=3651))
    write_dev_pki(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)
    _load(first.partner_cert).verify_directly_issued_by(_load(first.ca_cert))


def test_foreign_ca_client_cert_does_not_verify(tmp_path: Path, pki: DevPki) -> None:
    foreign_ca, foreign_key = write_ca(tmp_path / "foreign", "Foreign CA")
    assert _load(foreign_ca).public_key() != _load(pki.ca_cert).public_key()
    assert stat.S_IMODE(foreign_key.stat().st_mode) == 0o600

    cert, key = issue_client_cert(foreign_ca, foreign_key, tmp_path / "foreign", "acme")
    assert cert.name == "partner-acme.pem"
    assert key.name == "partner-acme-key.pem"
    # Same identity URI as the real partner, but the wrong issuer.
    _verifier(foreign_ca).build_client_verifier().verify(_load(cert), [])
    with pytest.raises(VerificationError):
        _verifier(pki.ca_cert).build_client_verifier().verify(_load(cert), [])


def test_client_cert_with_a_custom_uri(tmp_path: Path, pki: DevPki) -> None:
    cert, _ = issue_client_cert(
        pki.ca_cert, pki.ca_key, tmp_path, "mallory", san_uri="spiffe://seedline.dev/admin/mallory"
    )
    verified = _verifier(pki.ca_cert).build_client_verifier().verify(_load(cert), [])
    assert verified.subjects == [x509.UniformResourceIdentifier("spiffe://seedline.dev/admin/mallory")]


@pytest.mark.parametrize("name", ["", "a/b", "-acme", "acme corp", "x" * 65])
def test_invalid_partner_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        write_dev_pki(tmp_path, partner=name)


def test_server_hosts_must_not_be_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="server_hosts"):
        write_dev_pki(tmp_path, server_hosts=())
