"""The CA's PKI settings (publication URLs, names, lifetimes) and the names of its three authorities."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from urllib.parse import urlsplit

from services.ca_service.domain.errors import InvalidPkiSettings
from services.ca_service.domain.keys import KeyAlgorithm

MAX_BACKDATE = timedelta(minutes=5)
"""The most a notBefore may be set before the signing time (to absorb client clock skew)."""

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9.\-]{0,253}[a-z0-9])?")


class CaKind(Enum):
    """Names one of the three authorities: the root and its two issuing intermediates."""

    ROOT = "root"
    CUSTOMER = "customer"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class PkiSettings:
    """Holds what a deployment chooses about its PKI; the defaults suit `kagi dev`.

    URL templates take `{base}` (the public base URL) and `{ca}` (root, customer or internal). CA-issuer
    URLs point at DER certificates (".crt"): RFC 5280 section 4.2.2.1 requires DER (or certs-only CMS) there.
    """

    base_url: str = "http://127.0.0.1:8080"
    crl_url_template: str = "{base}/pki/crl/{ca}.crl"
    ocsp_url_template: str = "{base}/pki/ocsp"
    ca_issuers_url_template: str = "{base}/pki/{ca}-ca.crt"
    organization: str = "kagi"
    root_common_name: str = "kagi Root CA"
    customer_ca_common_name: str = "kagi Customer CA"
    internal_ca_common_name: str = "kagi Internal CA"
    spiffe_trust_domain: str = "kagi.internal"
    key_algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256
    root_validity: timedelta = timedelta(days=20 * 365)
    intermediate_validity: timedelta = timedelta(days=10 * 365)
    ocsp_signer_validity: timedelta = timedelta(days=30)
    ocsp_signer_renew_before: timedelta = timedelta(days=10)
    crl_validity: timedelta = timedelta(days=1)
    # The root's CRL is signed offline (the root key stays closed), so it is valid for long.
    root_crl_validity: timedelta = timedelta(days=365)
    ocsp_response_validity: timedelta = timedelta(hours=1)
    backdate: timedelta = MAX_BACKDATE

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        for name in ("crl_url_template", "ocsp_url_template", "ca_issuers_url_template"):
            try:
                url = getattr(self, name).format(base=self.base_url.rstrip("/"), ca="customer")
            except (KeyError, IndexError, ValueError):
                problems[name] = "may use only the placeholders {base} and {ca}"
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems[name] = "must expand to an http:// or https:// URL with a host"
        for name in ("organization", "root_common_name", "customer_ca_common_name", "internal_ca_common_name"):
            value: str = getattr(self, name)
            if not value.strip() or len(value) > 64:
                problems[name] = "must be 1-64 characters"
        if not _TRUST_DOMAIN_RE.fullmatch(self.spiffe_trust_domain):
            problems["spiffe_trust_domain"] = "must be a lower-case DNS-style name"
        for name in (
            "root_validity",
            "intermediate_validity",
            "ocsp_signer_validity",
            "crl_validity",
            "root_crl_validity",
            "ocsp_response_validity",
        ):
            if getattr(self, name) <= timedelta(0):
                problems[name] = "must be positive"
        if not timedelta(0) < self.ocsp_signer_renew_before < self.ocsp_signer_validity:
            problems["ocsp_signer_renew_before"] = "must be positive and shorter than ocsp_signer_validity"
        if not timedelta(0) <= self.backdate <= MAX_BACKDATE:
            problems["backdate"] = "must be between 0 and 5 minutes"
        if problems:
            raise InvalidPkiSettings("invalid PKI settings", fields=problems)

    def crl_url(self, ca: CaKind) -> str:
        """Return where the CRL of `ca` is published."""
        return self._expand(self.crl_url_template, ca)

    def ocsp_url(self, ca: CaKind) -> str:
        """Return where the OCSP responder for certificates issued by `ca` answers."""
        return self._expand(self.ocsp_url_template, ca)

    def ca_issuers_url(self, ca: CaKind) -> str:
        """Return where the certificate of `ca` is published (for AIA caIssuers)."""
        return self._expand(self.ca_issuers_url_template, ca)

    def common_name(self, ca: CaKind) -> str:
        """Return the CN in the subject of `ca`'s certificate."""
        return {
            CaKind.ROOT: self.root_common_name,
            CaKind.CUSTOMER: self.customer_ca_common_name,
            CaKind.INTERNAL: self.internal_ca_common_name,
        }[ca]

    def _expand(self, template: str, ca: CaKind) -> str:
        return template.format(base=self.base_url.rstrip("/"), ca=ca.value)
