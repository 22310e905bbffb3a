"""Identities, profiles and PKI settings: every ill-formed input is refused naming the field and the rule."""

from __future__ import annotations

import unicodedata
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.ca_service.domain.errors import InvalidIdentity, InvalidPkiSettings, UnknownProfile
from services.ca_service.domain.identity import CustomerIdentity, ServiceIdentity
from services.ca_service.domain.profiles import CUSTOMER_PROFILE, SERVICE_PROFILE, get_profile
from services.ca_service.domain.settings import CaKind, PkiSettings


def test_empty_customer_identity_names_every_empty_field():
    """An identity with every field empty is refused, naming user_id, login_id, user_name and company."""
    with pytest.raises(InvalidIdentity) as error:
        CustomerIdentity(user_id="", login_id="", user_name=" ", company="")
    assert error.value.reason == "INVALID_IDENTITY"
    assert set(error.value.fields) == {"user_id", "login_id", "user_name", "company"}
    assert all(rule == "must not be empty" for rule in error.value.fields.values())


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("user_name", "x" * 65, "at most 64"),
        ("company", "ACME\x00Corp", "control"),
        ("login_id", "山田01", "half-width"),
        ("user_id", "../etc", "A-Z a-z 0-9"),
    ],
)
def test_ill_formed_customer_field_is_named(field, value, rule):
    """Over-long names, control characters, non-PrintableString login IDs and odd user IDs are refused."""
    fields = {"user_id": "u-1", "login_id": "login01", "user_name": "Taro", "company": "ACME"} | {field: value}
    with pytest.raises(InvalidIdentity) as error:
        CustomerIdentity(**fields)
    assert list(error.value.fields) == [field]
    assert rule in error.value.fields[field]


def test_customer_names_are_trimmed_and_nfc_normalised(settings):
    """Decomposed Japanese (NFD) is stored NFC, so the same name always gives the same subject bytes."""
    decomposed = unicodedata.normalize("NFD", "株式会社 ガギ")
    identity = CustomerIdentity(user_id="u-1", login_id="login01", user_name=" 太郎 ", company=decomposed)
    assert identity.company == "株式会社 ガギ"
    assert identity.user_name == "太郎"


def test_customer_subject_is_utf8_with_printable_serial_number(customer, settings):
    """The subject is O=company, CN=user name as UTF8String and serialNumber=login ID as PrintableString."""
    subject = customer.subject(settings)
    assert [(a.oid, a.value, a._type) for a in subject] == [
        (NameOID.ORGANIZATION_NAME, "株式会社 山田商事", _ASN1Type.UTF8String),
        (NameOID.COMMON_NAME, "山田 太郎", _ASN1Type.UTF8String),
        (NameOID.SERIAL_NUMBER, "yamada01", _ASN1Type.PrintableString),
    ]
    assert customer.subject_alt_name(settings).get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:kagi:user:u-0001"
    ]


def test_service_identity_carries_one_spiffe_uri_first(service, settings):
    """A service's SAN starts with its single SPIFFE URI, then its DNS names and IP addresses."""
    san = service.subject_alt_name(settings)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://kagi.internal/gateway"]
    assert san.get_values_for_type(x509.DNSName) == ["gateway.kagi.internal"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"role": "admin"}, "role"),
        ({"role": ""}, "role"),
        ({"role": "ca", "dns_names": ("bad_name.example",)}, "dns_names"),
        ({"role": "ca", "ip_addresses": ("300.1.1.1",)}, "ip_addresses"),
    ],
)
def test_ill_formed_service_identity_is_named(kwargs, field):
    """Unknown roles, bad DNS names and bad IP addresses are refused naming the field."""
    with pytest.raises(InvalidIdentity) as error:
        ServiceIdentity(**kwargs)
    assert field in error.value.fields


def test_profiles_are_found_by_name():
    """The customer profile is clientAuth from the customer CA; the service profile is server+client auth."""
    assert get_profile("customer") is CUSTOMER_PROFILE
    assert CUSTOMER_PROFILE.issuer is CaKind.CUSTOMER
    assert CUSTOMER_PROFILE.extended_key_usages == (ExtendedKeyUsageOID.CLIENT_AUTH,)
    assert CUSTOMER_PROFILE.validity == timedelta(days=365)
    assert get_profile("service") is SERVICE_PROFILE
    assert SERVICE_PROFILE.extended_key_usages == (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@pytest.mark.parametrize("name", ["admin", "", "Customer"])
def test_unknown_profile_is_refused(name):
    """An unknown profile name gives UNKNOWN_PROFILE naming the field profile and the known names."""
    with pytest.raises(UnknownProfile) as error:
        get_profile(name)
    assert error.value.reason == "UNKNOWN_PROFILE"
    assert "customer" in error.value.fields["profile"]


def test_publication_urls_follow_the_settings():
    """CRL, OCSP and CA-issuer URLs expand from a configurable base and templates."""
    settings = PkiSettings(base_url="https://pki.bank.example/", ca_issuers_url_template="{base}/certs/{ca}.der")
    assert settings.crl_url(CaKind.CUSTOMER) == "https://pki.bank.example/pki/crl/customer.crl"
    assert settings.ocsp_url(CaKind.INTERNAL) == "https://pki.bank.example/pki/ocsp"
    assert settings.ca_issuers_url(CaKind.ROOT) == "https://pki.bank.example/certs/root.der"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_url": "ftp://x"}, "crl_url_template"),
        ({"crl_url_template": "{base}/{nope}"}, "crl_url_template"),
        ({"backdate": timedelta(minutes=6)}, "backdate"),
        ({"ocsp_signer_renew_before": timedelta(days=31)}, "ocsp_signer_renew_before"),
        ({"crl_validity": timedelta(0)}, "crl_validity"),
        ({"organization": ""}, "organization"),
    ],
)
def test_invalid_settings_are_refused(kwargs, field):
    """Settings that would make broken certificates are refused at construction, naming the setting."""
    with pytest.raises(InvalidPkiSettings) as error:
        PkiSettings(**kwargs)
    assert field in error.value.fields
