"""
A throwaway certificate authority for tests that speak real TLS on 127.0.0.1.

:class:`TestCA` makes a CA key and certificate in memory, writes the CA
certificate to a PEM file (what the proxy's ``--ca-bundle`` takes), and hands
out Twisted server options for leaf certificates it signs. It can also make a
self-signed leaf it did not sign, so tests can prove certificate verification
rejects a server it should not trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from collections.abc import Sequence
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl

_VALID_BEFORE = datetime.timedelta(days=1)
_VALID_AFTER = datetime.timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Subrouter tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alternative_names(hostnames: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for hostname in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
        except ValueError:
            names.append(x509.DNSName(hostname))
    return x509.SubjectAlternativeName(names)


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _leaf(
    hostnames: Sequence[str],
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    issuer_certificate: x509.Certificate | None,
) -> ssl.CertificateOptions:
    """
    Make a server certificate for ``hostnames`` and return options serving it.

    :param hostnames: DNS names and IP addresses to put in the SAN extension.
    :param issuer_name: the issuer's subject name (the leaf's own for a
        self-signed leaf).
    :param issuer_key: the key that signs the leaf; ``None`` to self-sign.
    :param issuer_certificate: the issuer's certificate, for the authority key
        identifier; ``None`` when self-signing.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(hostnames[0] if hostnames else "localhost")
    if issuer_key is None:
        issuer_name = subject
        signing_key = key
        authority_key_identifier = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            key.public_key()
        )
    else:
        assert issuer_certificate is not None
        signing_key = issuer_key
        authority_key_identifier = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _VALID_BEFORE)
        .not_valid_after(now + _VALID_AFTER)
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_subject_alternative_names(hostnames), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(authority_key_identifier, critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    # Twisted hands these straight to pyOpenSSL, which takes cryptography
    # objects (and warns that its own X509/PKey wrappers are deprecated).
    return ssl.CertificateOptions(
        privateKey=cast(Any, key),
        certificate=cast(Any, certificate),
    )


class TestCA:
    """
    A certificate authority made fresh for one test (or one session).

    :ivar ca_pem_path: the CA certificate's PEM file, for ``--ca-bundle``.
    :ivar ca_pem: the same PEM bytes.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, directory: pathlib.Path) -> None:
        """
        :param directory: an existing directory; ``ca.pem`` is written into it.
        """
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name("Subrouter test CA")
        public_key = self._key.public_key()
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _VALID_BEFORE)
            .not_valid_after(now + _VALID_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem: bytes = _cert_pem(self._certificate)
        path = directory / "ca.pem"
        path.write_bytes(self.ca_pem)
        self.ca_pem_path: str = str(path)
        self._server_options: dict[tuple[str, ...], ssl.CertificateOptions] = {}
        self._untrusted: ssl.CertificateOptions | None = None

    def trust_root(self) -> ssl.Certificate:
        """
        The CA certificate as a Twisted trust root, for a test client's
        ``BrowserLikePolicyForHTTPS(trustRoot=...)`` or ``optionsForClientTLS``.
        """
        return ssl.Certificate.loadPEM(self.ca_pem)

    def server_options(
        self, hostnames: Sequence[str] = ("localhost", "127.0.0.1")
    ) -> ssl.CertificateOptions:
        """
        Options serving a leaf certificate signed by this CA.

        :param hostnames: the names the certificate is good for; entries that
            parse as IP addresses become IP SANs, the rest DNS SANs. One leaf is
            made per distinct tuple and reused.
        """
        key = tuple(hostnames)
        options = self._server_options.get(key)
        if options is None:
            options = _leaf(key, self._certificate.subject, self._key, self._certificate)
            self._server_options[key] = options
        return options

    def untrusted_server_options(self) -> ssl.CertificateOptions:
        """
        Options serving a self-signed leaf for ``localhost`` and
        ``127.0.0.1`` that this CA did not sign: a client trusting only this CA
        must refuse it.
        """
        if self._untrusted is None:
            self._untrusted = _leaf(("localhost", "127.0.0.1"), _name("unused"), None, None)
        return self._untrusted


async def listen_tls(reactor: Any, options: ssl.CertificateOptions, resource: Any) -> Any:
    """
    Serve ``resource`` (a twisted.web resource) over TLS with ``options``
    (e.g. ``ca.server_options()``) on a free loopback port; the listening
    port.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint, wrapServerTLS
    from twisted.web.server import Site

    endpoint = wrapServerTLS(options, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    return await endpoint.listen(Site(resource))
