"""The federation's certificate authority, the SuperLink's TLS certificate and the
SuperNodes' authentication keys, created with ``cryptography`` (no openssl binary), and the
checks that turn a wrong, expired or mismatched file into an error naming it.

- CA: EC P-256, self-signed, ``basicConstraints CA:TRUE``.
- SuperLink: EC P-256 certificate signed by the CA, ``subjectAltName`` = every host name or
  IP address the SuperNodes and the ``flwr`` CLI use to reach it (``localhost`` and
  ``127.0.0.1`` always), ``extendedKeyUsage serverAuth``.
- SuperNode i: an EC P-384 key pair in OpenSSH format, as ``flower-supernode
  --auth-supernode-private-key`` and ``flwr supernode register`` read it (Flower accepts
  NIST curves only).
Private keys are written owner-only (0600).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulation.deploy.layout import Layout, write_secret
from strategies.runconfig import ConfigError

ALWAYS_HOSTS = ("localhost", "127.0.0.1")


def cert_hosts(hosts) -> list[str]:
    """The names the SuperLink's certificate is valid for: loopback, then ``hosts``, once each."""
    return list(dict.fromkeys([*ALWAYS_HOSTS, *hosts]))


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Anther federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_tls(lay: Layout, hosts: list[str], days: int) -> None:
    """CA and SuperLink certificate valid for ``days`` from now, covering ``hosts``."""
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("Anther CA")).issuer_name(_name("Anther CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    link_key = ec.generate_private_key(ec.SECP256R1())
    names = cert_hosts(hosts)
    link = (
        x509.CertificateBuilder().subject_name(_name(names[-1] if hosts else "localhost")).issuer_name(ca.subject)
        .public_key(link_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    lay.tls.mkdir(parents=True, exist_ok=True)
    write_secret(lay.ca_key, _pem_key(ca_key))
    lay.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    write_secret(lay.link_key, _pem_key(link_key))
    lay.link_cert.write_bytes(link.public_bytes(serialization.Encoding.PEM))


def create_node_key(private: Path, public: Path) -> None:
    """One SuperNode's authentication key pair (OpenSSH EC P-384)."""
    key = ec.generate_private_key(ec.SECP384R1())
    write_secret(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                            serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")


def _load_cert(path: Path) -> x509.Certificate:
    if not path.exists():
        raise ConfigError(f"{path}: missing (created by `anther-deploy init`)")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as err:
        raise ConfigError(f"{path}: not a PEM certificate ({err})") from None


def _check_dates(cert: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                          "create new ones with `anther-deploy init DIR --force`")
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{path}: certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                          "(is this machine's clock right?)")


def check_ca(path: Path) -> x509.Certificate:
    """The CA certificate, or a ConfigError naming ``path`` (missing, not PEM, expired)."""
    ca = _load_cert(path)
    _check_dates(ca, path)
    return ca


def check_superlink_tls(lay: Layout) -> None:
    """The SuperLink's certificate, key and CA belong together and are in date."""
    ca = check_ca(lay.ca_cert)
    cert = _load_cert(lay.link_cert)
    _check_dates(cert, lay.link_cert)
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: all mean "not this CA"
        raise ConfigError(f"{lay.link_cert} was not issued by {lay.ca_cert}: the files come from different "
                          "`anther-deploy init` runs") from None
    if not lay.link_key.exists():
        raise ConfigError(f"{lay.link_key}: missing (the SuperLink's private key)")
    try:
        key = serialization.load_pem_private_key(lay.link_key.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{lay.link_key}: not an unencrypted PEM private key ({err})") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise ConfigError(f"{lay.link_key} does not match {lay.link_cert}")


def check_node_key(path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"{path}: missing (this node's key; created by `anther-deploy init DIR --nodes N`)")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: not an unencrypted OpenSSH private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: Flower's node authentication needs an EC key, got {type(key).__name__}")


def covers(cert_path: Path, host: str) -> bool:
    """Whether the certificate's subjectAltName names ``host``."""
    names = _load_cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    try:
        return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host in names.get_values_for_type(x509.DNSName)
