"""Throw-away TLS credentials made in memory: a certificate authority and the certificates
it signs, as PEM text (with the ``cryptography`` package, imported when first needed).

:meth:`distributary.Security.temporary` makes an authority, has it sign one certificate
for every role and forgets the authority's key, so that nobody, not even the cluster's
own processes, can make another certificate that the cluster trusts.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

__all__ = ["Authority", "Credentials", "new_authority"]

# The temporary credentials hold for a year: as long as a cluster could plausibly run.
DEFAULT_VALIDITY = datetime.timedelta(days=365)
# ... and from a little before now, so that clocks a bit behind accept them.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Credentials:
    """A certificate and its private key, as PEM text."""

    cert: str
    key: str


class Authority:
    """A certificate authority that exists only in this process: its certificate
    (``cert``, PEM text, what peers trust) and its key (kept in memory)."""

    def __init__(self, name: str = "distributary temporary CA") -> None:
        x509, hashes, _, ec, oid = _cryptography()
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, name)])
        self._name = subject
        key_usage = x509.KeyUsage(
            digital_signature=True,
            key_cert_sign=True,
            crl_sign=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + 10 * DEFAULT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage, critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = _pem(certificate)

    def issue(
        self,
        name: str = "distributary",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Credentials:
        """A new key and a certificate for it signed by this authority, good for both
        ends of a connection, valid from ``not_before`` to ``not_after`` (by default
        from an hour ago for a year)."""
        x509, hashes, serialization, ec, oid = _cryptography()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = x509.ExtendedKeyUsage(
            [oid.ExtendedKeyUsageOID.SERVER_AUTH, oid.ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _BACKDATE)
            .not_valid_after(not_after or now + DEFAULT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return Credentials(_pem(certificate), key_pem)


def new_authority(name: str = "distributary temporary CA") -> Authority:
    """A new certificate authority, in memory."""
    return Authority(name)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(certificate: Any) -> str:
    _, _, serialization, _, _ = _cryptography()
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _cryptography() -> tuple[Any, Any, Any, Any, Any]:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509 import oid
    except ImportError as err:  # (a core dependency, but an install may lack it)
        raise ImportError(
            "Temporary TLS credentials (Security.temporary(), security=True) need the "
            "'cryptography' package: pip install cryptography"
        ) from err
    return x509, hashes, serialization, ec, oid
