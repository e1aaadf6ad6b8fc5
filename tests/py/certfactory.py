#!/usr/bin/env python3
"""Certificate factories for the zt-mesh tests: good and deliberately bad SVIDs and CA certs.

Everything here is built with the `cryptography` package, independently of mesh-ca, so the
certificates can be fed to both our checker (svid_check.py) and to `mesh-ca inspect`.

As a library: make_root(), make_intermediate(), make_leaf() take keyword overrides for each
profile-relevant field; VARIANTS lists one bad certificate per rule.

As a program:
    python3 certfactory.py OUTDIR
writes OUTDIR/root.pem, OUTDIR/<variant>.pem for every variant (the certificate followed by
its issuer) and OUTDIR/manifest.json describing each file: role, the svid_check rules it must
violate (empty for good ones) and keywords a foreign checker's violation text should contain.

For the mesh-proxy tests: write_ca_leaf_variant() signs good and bad leaves with the intermediate
of a real (unencrypted) mesh-ca CA, and tls_probe() connects to a sidecar like a good or bad peer
would. tool() exposes both to the Rust tests (see its docstring).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TD = "example.org"
UTC = dt.timezone.utc


def now() -> dt.datetime:
    # Whole seconds: X.509 times carry no fractions, and comparisons in tests stay exact.
    return dt.datetime.now(UTC).replace(microsecond=0)


def new_key(kind: str = "p256"):
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


def random_serial() -> int:
    # 16 random octets, top bit cleared, top octet non-zero: 127 bits, positive, 16 octets.
    b = bytearray(secrets.token_bytes(16))
    b[0] = (b[0] & 0x7F) or 1
    return int.from_bytes(bytes(b), "big")


@dataclass
class Issued:
    cert: x509.Certificate
    key: object

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def ku(
    digital_signature=False,
    key_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Profile:
    """Every profile-relevant field of a certificate; None for an extension means "omit it"."""

    subject_cn: str
    uris: list[str]
    dns: list[str] = field(default_factory=list)
    ca: bool | None = False  # None: no basicConstraints
    bc_critical: bool = True
    key_usage: x509.KeyUsage | None = None
    ku_critical: bool = True
    eku: list | None = None
    name_constraints: x509.NameConstraints | None = None
    serial: int | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    key_kind: str = "p256"


def build(p: Profile, issuer: Issued | None, signer_key=None) -> Issued:
    """Builds and signs a certificate; self-signed when `issuer` is None.

    `signer_key` overrides the key that signs (a forged signature under the issuer's name).
    """
    key = new_key(p.key_kind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, p.subject_cn)])
    t = now()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(p.serial if p.serial is not None else random_serial())
        .not_valid_before(p.not_before or t - dt.timedelta(minutes=1))
        .not_valid_after(p.not_after or t + dt.timedelta(hours=1))
    )
    names = [x509.UniformResourceIdentifier(u) for u in p.uris] + [x509.DNSName(d) for d in p.dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if p.ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=p.ca, path_length=None), critical=p.bc_critical)
    if p.key_usage is not None:
        b = b.add_extension(p.key_usage, critical=p.ku_critical)
    if p.eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(p.eku), critical=False)
    if p.name_constraints is not None:
        b = b.add_extension(p.name_constraints, critical=True)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    sk = signer_key or (issuer.key if issuer else key)
    return Issued(b.sign(sk, hashes.SHA256()), key)


def root_profile(td: str = TD, **over) -> Profile:
    t = now()
    base = dict(
        subject_cn=f"{td} test root",
        uris=[f"spiffe://{td}"],
        ca=True,
        key_usage=ku(key_cert_sign=True, crl_sign=True),
        not_before=t - dt.timedelta(days=1),
        not_after=t + dt.timedelta(days=3650),
    )
    base.update(over)
    return Profile(**base)


def intermediate_profile(td: str = TD, **over) -> Profile:
    t = now()
    base = dict(
        subject_cn=f"{td} test intermediate",
        uris=[f"spiffe://{td}"],
        ca=True,
        key_usage=ku(key_cert_sign=True, crl_sign=True),
        not_before=t - dt.timedelta(hours=12),
        not_after=t + dt.timedelta(days=365),
    )
    base.update(over)
    return Profile(**base)


def leaf_profile(td: str = TD, zone: str = "payments", workload: str = "charge", **over) -> Profile:
    base = dict(
        subject_cn=workload,
        uris=[f"spiffe://{td}/ns/{zone}/sa/{workload}"],
        ca=False,
        bc_critical=True,
        key_usage=ku(digital_signature=True),
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    base.update(over)
    return Profile(**base)


def make_root(td: str = TD, **over) -> Issued:
    return build(root_profile(td, **over), None)


def make_intermediate(root: Issued, td: str = TD, **over) -> Issued:
    return build(intermediate_profile(td, **over), root)


def make_leaf(issuer: Issued, td: str = TD, signer_key=None, **over) -> Issued:
    return build(leaf_profile(td, **over), issuer, signer_key=signer_key)


# ---------------------------------------------------------------------------------------------
# Raw DER surgery, for shapes the builder refuses to make (notAfter before notBefore).
# ---------------------------------------------------------------------------------------------


def _der_header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, header length, content length) of the DER element at `pos`."""
    tag = data[pos]
    first = data[pos + 1]
    if first < 0x80:
        return tag, 2, first
    n = first & 0x7F
    return tag, 2 + n, int.from_bytes(data[pos + 2 : pos + 2 + n], "big")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def resign(cert: x509.Certificate, tbs: bytes, key) -> x509.Certificate:
    """A certificate with `tbs` as its TBSCertificate, signed by `key` (ECDSA-SHA256)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    _, outer_hl, _ = _der_header(der, 0)
    pos = outer_hl
    _, hl, ln = _der_header(der, pos)
    pos += hl + ln  # skip the old TBS
    _, hl, ln = _der_header(der, pos)
    sig_alg = der[pos : pos + hl + ln]
    sig = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    bitstring = b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig
    body = tbs + sig_alg + bitstring
    return x509.load_der_x509_certificate(b"\x30" + _der_len(len(body)) + body)


def swap_validity(issued: Issued, signer_key) -> x509.Certificate:
    """The same certificate with notBefore and notAfter exchanged, re-signed by `signer_key`."""
    tbs = bytearray(issued.cert.tbs_certificate_bytes)
    nb = issued.cert.not_valid_before_utc
    na = issued.cert.not_valid_after_utc

    def utctime(t: dt.datetime) -> bytes:
        return b"\x17\x0d" + t.strftime("%y%m%d%H%M%SZ").encode()

    a, b = utctime(nb), utctime(na)
    i, j = tbs.find(a), tbs.find(b)
    if i < 0 or j < 0 or j != i + len(a):
        raise RuntimeError("validity encoding not found where expected")
    tbs[i : i + len(a) + len(b)] = b + a
    return resign(issued.cert, bytes(tbs), signer_key)


# ---------------------------------------------------------------------------------------------
# The catalogue of variants
# ---------------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    role: str  # "leaf" or "ca"
    expect_rules: list[str]  # svid_check rules that must fire (empty: the certificate is good)
    # Words (lowercase, letters and digits only) at least one of which a foreign checker's
    # violation rule or message should contain. Empty for good certificates.
    keywords: list[str]
    # False when the defect is outside the X.509-SVID profile proper (a forged signature, a
    # foreign trust domain): a chain validator catches it, a profile checker need not.
    profile: bool = True
    make: object = None  # (root, intermediate) -> (cert, issuer cert)


def _leaf(**over):
    def f(root: Issued, inter: Issued):
        return make_leaf(inter, **over).cert, inter.cert

    return f


def _ca(**over):
    def f(root: Issued, inter: Issued):
        return make_intermediate(root, **over).cert, root.cert

    return f


def _swapped_leaf(root: Issued, inter: Issued):
    t = now()
    leaf = make_leaf(inter, not_before=t - dt.timedelta(minutes=5), not_after=t + dt.timedelta(hours=1))
    return swap_validity(leaf, inter.key), inter.cert


def _forged_leaf(root: Issued, inter: Issued):
    return make_leaf(inter, signer_key=new_key()).cert, inter.cert


def _outliving_leaf(root: Issued, inter: Issued):
    return make_leaf(inter, not_after=inter.cert.not_valid_after_utc + dt.timedelta(days=1)).cert, inter.cert


def _early_leaf(root: Issued, inter: Issued):
    return make_leaf(inter, not_before=inter.cert.not_valid_before_utc - dt.timedelta(days=1)).cert, inter.cert


SPIFFE_KW = ["spiffe", "uri", "lowercase", "uppercase", "segment", "percent", "trailing", "dot"]
BC_KW = ["basicconstraints", "basic", "isca", "catrue", "cafalse", "caflag", "keycertsign", "path"]
EKU_KW = ["eku", "extendedkeyusage", "serverauth", "clientauth"]

VARIANTS: list[Variant] = [
    # Good certificates: every checker must accept them.
    Variant("good_leaf", "leaf", [], [], make=_leaf()),
    Variant("good_leaf_dns_and_key_encipherment", "leaf", [], [],
            make=_leaf(dns=["charge.payments.svc"],
                       key_usage=ku(digital_signature=True, key_encipherment=True))),
    Variant("good_intermediate", "ca", [], [], make=_ca()),
    # Leaf SVID defects.
    Variant("leaf_two_uri_sans", "leaf", ["uri-san-count"], ["uri", "san"],
            make=_leaf(uris=["spiffe://example.org/ns/payments/sa/charge",
                             "spiffe://example.org/ns/orders/sa/checkout"])),
    Variant("leaf_no_uri_san_id_in_dns", "leaf", ["uri-san-count"], ["uri", "san", "spiffe"],
            make=_leaf(uris=[], dns=["spiffe.example.org"])),
    Variant("leaf_ca_true", "leaf", ["basic-constraints"], BC_KW, make=_leaf(ca=True)),
    Variant("leaf_no_basic_constraints", "leaf", ["basic-constraints"], BC_KW, make=_leaf(ca=None)),
    Variant("leaf_missing_eku", "leaf", ["eku"], EKU_KW, make=_leaf(eku=None)),
    Variant("leaf_eku_server_only", "leaf", ["eku"], EKU_KW,
            make=_leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH])),
    Variant("leaf_key_cert_sign", "leaf", ["key-usage-cert-sign"], ["keycertsign", "certsign"],
            make=_leaf(key_usage=ku(digital_signature=True, key_cert_sign=True))),
    Variant("leaf_crl_sign", "leaf", ["key-usage-crl-sign"], ["crlsign"],
            make=_leaf(key_usage=ku(digital_signature=True, crl_sign=True))),
    Variant("leaf_key_usage_not_critical", "leaf", ["key-usage"], ["critical"],
            make=_leaf(ku_critical=False)),
    Variant("leaf_key_usage_missing", "leaf", ["key-usage"], ["keyusage"], make=_leaf(key_usage=None)),
    Variant("leaf_no_digital_signature", "leaf", ["key-usage-digital-signature"], ["digitalsignature"],
            make=_leaf(key_usage=ku(key_agreement=True))),
    Variant("leaf_uppercase_trust_domain", "leaf", ["spiffe-id"], SPIFFE_KW + ["trustdomain"],
            make=_leaf(uris=["spiffe://Example.ORG/ns/payments/sa/charge"])),
    Variant("leaf_dotdot_segment", "leaf", ["spiffe-id"], SPIFFE_KW,
            make=_leaf(uris=["spiffe://example.org/ns/../sa/charge"])),
    Variant("leaf_empty_segment", "leaf", ["spiffe-id"], SPIFFE_KW,
            make=_leaf(uris=["spiffe://example.org/ns//payments/sa/charge"])),
    Variant("leaf_trailing_slash", "leaf", ["spiffe-id"], SPIFFE_KW,
            make=_leaf(uris=["spiffe://example.org/ns/payments/sa/charge/"])),
    Variant("leaf_percent_encoded", "leaf", ["spiffe-id"], SPIFFE_KW,
            make=_leaf(uris=["spiffe://example.org/ns/pay%6dents/sa/charge"])),
    Variant("leaf_query", "leaf", ["spiffe-id"], SPIFFE_KW + ["query"],
            make=_leaf(uris=["spiffe://example.org/ns/payments/sa/charge?x=1"])),
    Variant("leaf_fragment", "leaf", ["spiffe-id"], SPIFFE_KW + ["fragment"],
            make=_leaf(uris=["spiffe://example.org/ns/payments/sa/charge#x"])),
    Variant("leaf_port", "leaf", ["spiffe-id"], SPIFFE_KW + ["port"],
            make=_leaf(uris=["spiffe://example.org:8443/ns/payments/sa/charge"])),
    Variant("leaf_userinfo", "leaf", ["spiffe-id"], SPIFFE_KW + ["userinfo", "user"],
            make=_leaf(uris=["spiffe://admin@example.org/ns/payments/sa/charge"])),
    Variant("leaf_wrong_scheme", "leaf", ["spiffe-id"], SPIFFE_KW + ["scheme"],
            make=_leaf(uris=["https://example.org/ns/payments/sa/charge"])),
    Variant("leaf_id_too_long", "leaf", ["spiffe-id"], SPIFFE_KW + ["long", "2048", "length"],
            make=_leaf(uris=["spiffe://example.org/ns/payments/sa/charge/" + "/".join(["a" * 60] * 34)])),
    Variant("leaf_not_mesh_shape", "leaf", ["spiffe-id-shape"], SPIFFE_KW + ["shape", "form"],
            make=_leaf(uris=["spiffe://example.org/payments/charge"])),
    Variant("leaf_uppercase_zone", "leaf", ["spiffe-id-shape"], SPIFFE_KW + ["zone", "label"],
            make=_leaf(uris=["spiffe://example.org/ns/Payments/sa/charge"])),
    Variant("leaf_trust_domain_only", "leaf", ["spiffe-id-shape"], SPIFFE_KW + ["path", "shape", "form"],
            make=_leaf(uris=["spiffe://example.org"])),
    Variant("leaf_small_serial", "leaf", ["serial"], ["serial", "entropy"], make=_leaf(serial=0x1234)),
    Variant("leaf_rsa_key", "leaf", ["key-algorithm"], ["p256", "ecdsa", "algorithm", "curve", "rsa", "publickey"],
            make=_leaf(key_kind="rsa")),
    Variant("leaf_p384_key", "leaf", ["key-algorithm"], ["p256", "ecdsa", "algorithm", "curve", "p384", "publickey"],
            make=_leaf(key_kind="p384")),
    Variant("leaf_validity_inverted", "leaf", ["validity"], ["validity", "notbefore", "notafter", "before", "after"],
            make=_swapped_leaf),
    Variant("leaf_outlives_issuer", "leaf", ["validity-within-issuer"],
            ["issuer", "validity", "notafter", "outlive"], make=_outliving_leaf),
    Variant("leaf_predates_issuer", "leaf", ["validity-within-issuer"],
            ["issuer", "validity", "notbefore", "precede"], make=_early_leaf),
    # Chain defects: outside the profile, caught by path validation and our checker.
    Variant("leaf_forged_signature", "leaf", ["issuer-signature"], ["signature"], profile=False,
            make=_forged_leaf),
    Variant("leaf_foreign_trust_domain", "leaf", ["trust-domain"], ["trustdomain"], profile=False,
            make=_leaf(uris=["spiffe://other.org/ns/payments/sa/charge"])),
    # CA certificate defects.
    Variant("ca_basic_constraints_not_critical", "ca", ["basic-constraints"], ["critical", "basic"],
            make=_ca(bc_critical=False)),
    Variant("ca_without_key_cert_sign", "ca", ["key-usage-cert-sign"], ["keycertsign", "certsign"],
            make=_ca(key_usage=ku(digital_signature=True, crl_sign=True))),
    Variant("ca_key_usage_not_critical", "ca", ["key-usage"], ["critical", "keyusage"],
            make=_ca(ku_critical=False)),
    Variant("ca_uri_with_path", "ca", ["ca-spiffe-id"], SPIFFE_KW + ["path", "trustdomain"],
            make=_ca(uris=["spiffe://example.org/ns/payments"])),
    Variant("ca_two_uri_sans", "ca", ["uri-san-count"], ["uri", "san"],
            make=_ca(uris=["spiffe://example.org", "spiffe://other.org"])),
    Variant("ca_uri_name_constraints", "ca", ["name-constraints-uri"], ["nameconstraint", "constraint", "uri"],
            make=_ca(name_constraints=x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier("example.org")], excluded_subtrees=None))),
]


def generate(outdir: str, td: str = TD) -> dict:
    """Writes root.pem, one PEM (certificate then issuer) per variant and manifest.json."""
    if td != TD:
        raise ValueError("variants are written for the example.org trust domain")
    os.makedirs(outdir, exist_ok=True)
    root = make_root(td)
    inter = make_intermediate(root, td)
    pem = serialization.Encoding.PEM
    with open(os.path.join(outdir, "root.pem"), "wb") as f:
        f.write(root.pem())
    with open(os.path.join(outdir, "intermediate.pem"), "wb") as f:
        f.write(inter.pem())
    entries = []
    for v in VARIANTS:
        cert, issuer = v.make(root, inter)
        path = os.path.join(outdir, f"{v.name}.pem")
        with open(path, "wb") as f:
            f.write(cert.public_bytes(pem) + issuer.public_bytes(pem))
        entries.append(
            {
                "name": v.name,
                "file": path,
                "role": v.role,
                "expect_rules": v.expect_rules,
                "keywords": v.keywords,
                "profile": v.profile,
                "good": not v.expect_rules,
            }
        )
    manifest = {"trust_domain": td, "root": os.path.join(outdir, "root.pem"), "variants": entries}
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


# ---------------------------------------------------------------------------------------------
# Leaves signed by a real mesh-ca intermediate, and a TLS probe (for the mesh-proxy tests)
# ---------------------------------------------------------------------------------------------


def load_ca_issuer(ca_dir: str) -> Issued:
    """The intermediate of a `mesh-ca init --insecure-no-passphrase` CA, able to sign."""
    with open(os.path.join(ca_dir, "intermediate.pem"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(ca_dir, "intermediate.key.pem"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return Issued(cert, key)


def _mesh_id(td: str, zone: str, workload: str) -> str:
    return f"spiffe://{td}/ns/{zone}/sa/{workload}"


# Seconds a "short_lived" variant stays valid: long enough for one full handshake on a busy
# machine, short enough for a test to wait for its expiry.
SHORT_LIVED_SECONDS = 20


def ca_leaf_variant(inter: Issued, name: str, zone: str, workload: str, td: str = TD):
    """(leaf Issued, certificates to send after the leaf, extra trust anchor or None) for one
    named defect.

    Signed by `inter` (the CA under test) unless the defect is the issuer itself. "good" is the
    control: the same factory with no defect, which the proxy must accept. "foreign_root" is a
    leaf of our trust domain under another trust domain's root (other.org); that root is the
    extra anchor, for a bundle that federates with it.
    """
    t = now()
    sid = _mesh_id(td, zone, workload)
    signed = {
        "good": {},
        "expired": dict(not_before=t - dt.timedelta(hours=2), not_after=t - dt.timedelta(hours=1)),
        "short_lived": dict(not_before=t - dt.timedelta(minutes=1),
                            not_after=t + dt.timedelta(seconds=SHORT_LIVED_SECONDS)),
        "not_yet_valid": dict(not_before=t + dt.timedelta(hours=1), not_after=t + dt.timedelta(hours=2)),
        "foreign_trust_domain": dict(uris=[_mesh_id("other.org", zone, workload)]),
        "two_uri_sans": dict(uris=[sid, _mesh_id(td, zone, workload + "2")]),
        "ca_leaf": dict(ca=True),
        "key_cert_sign": dict(key_usage=ku(digital_signature=True, key_cert_sign=True)),
        "id_in_cn_only": dict(uris=[], subject_cn=sid),
        "id_in_dns_only": dict(uris=[], dns=[f"{workload}.{zone}.{td}"], subject_cn=workload),
        "not_mesh_shape": dict(uris=[f"spiffe://{td}/{zone}/{workload}"]),
        "small_serial": dict(serial=0x1234),
        "rsa_key": dict(key_kind="rsa"),
    }
    if name in signed:
        return make_leaf(inter, td=td, zone=zone, workload=workload, **signed[name]), [inter.cert], None
    if name == "bad_signature":
        return make_leaf(inter, td=td, zone=zone, workload=workload, signer_key=new_key()), [inter.cert], None
    if name == "other_ca":
        other_root = make_root(td)
        other_inter = make_intermediate(other_root, td)
        return make_leaf(other_inter, td=td, zone=zone, workload=workload), [other_inter.cert], None
    if name == "foreign_root":
        other_root = make_root("other.org")
        other_inter = make_intermediate(other_root, "other.org")
        leaf = make_leaf(other_inter, td=td, zone=zone, workload=workload)
        return leaf, [other_inter.cert], other_root.cert
    if name == "self_signed":
        return build(leaf_profile(td, zone=zone, workload=workload), None), [], None
    raise ValueError(f"unknown variant {name!r}")


def write_ca_leaf_variant(ca_dir: str, name: str, zone: str, workload: str, outdir: str) -> str:
    """Writes OUTDIR/cert.pem (leaf then chain) and OUTDIR/key.pem, and OUTDIR/extra_anchor.pem
    when the variant has one; returns the leaf serial (hex)."""
    inter = load_ca_issuer(ca_dir)
    leaf, chain, extra = ca_leaf_variant(inter, name, zone, workload)
    os.makedirs(outdir, exist_ok=True)
    pem = serialization.Encoding.PEM
    if extra is not None:
        with open(os.path.join(outdir, "extra_anchor.pem"), "wb") as f:
            f.write(extra.public_bytes(pem))
    with open(os.path.join(outdir, "cert.pem"), "wb") as f:
        f.write(leaf.pem() + b"".join(c.public_bytes(pem) for c in chain))
    with open(os.path.join(outdir, "key.pem"), "wb") as f:
        f.write(leaf.key_pem())
    return format(leaf.cert.serial_number, "x")


def _read_some(sock, want: int, deadline: float) -> tuple[bytes, str | None]:
    """Reads until `want` bytes (0: until EOF), EOF, an error or the deadline."""
    got = b""
    while want == 0 or len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            return got, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (OSError, ssl.SSLError) as e:
            return got, f"{type(e).__name__}: {e}"
        if not chunk:
            return got, "eof"
        got += chunk
    return got, None


def tls_probe(
    host: str,
    port: int,
    cert: str | None = None,
    key: str | None = None,
    ca: str | None = None,
    tls12: bool = False,
    send: bytes = b"",
    raw: bytes | None = None,
    timeout: float = 10.0,
    again: bool = False,
    again_after_expiry: bool = False,
) -> dict:
    """Connects like a (possibly bad) peer sidecar would and reports what happened.

    `raw` sends those bytes over plain TCP instead of TLS, then half-closes. Otherwise a TLS
    client presents `cert` (the whole chain file, as `load_cert_chain` sends every certificate
    in it) and `key`, verifies the server against `ca` when given, caps the version at 1.2 when
    `tls12`, sends `send` and reads back as many bytes. With `again`, it then connects a second
    time offering the first connection's session, and reports that connection under "again"
    (its "resumed" says whether the server accepted the session). With `again_after_expiry`,
    the second connection waits until `cert` has expired (notAfter plus a second and a half).
    Never raises for network outcomes.
    """
    deadline = time.monotonic() + timeout
    if raw is not None:
        out: dict = {"handshake": False, "received": "", "error": None}
        sock = socket.create_connection((host, port), timeout=timeout)
        out["local"] = "%s:%d" % sock.getsockname()[:2]
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            got, err = _read_some(sock, 0, deadline)
            out.update(received=got.decode("latin-1"), error=err)
            return out
        finally:
            sock.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key)
    out, session = _tls_once(ctx, host, port, send, timeout, deadline, None)
    if again or again_after_expiry:
        if again_after_expiry:
            with open(cert, "rb") as f:
                not_after = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc
            wait = (not_after - now()).total_seconds() + 1.5
            time.sleep(max(0.0, wait))
            deadline = time.monotonic() + timeout
            out["waited_for_expiry"] = wait
        out["again"], _ = _tls_once(ctx, host, port, send, timeout, deadline, session)
    return out


def tls_serve(cert: str, key: str, ca: str | None, echo: bool) -> None:
    """A TLS 1.3 server on 127.0.0.1 (an ephemeral port, printed first as {"port": N}), for the
    cases a mesh-proxy cannot be: a peer that keeps serving a certificate after it expired, or
    an impostor CA. Requires and verifies a client certificate against `ca` when given. Prints
    one JSON line per connection: {"handshake", "resumed", "received"} (the first bytes read,
    latin-1); echoes them back when `echo`. Serves until killed; sessions resume (tickets)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)

    def handle(raw):
        report = {"handshake": False, "resumed": False, "received": ""}
        try:
            raw.settimeout(15)
            with ctx.wrap_socket(raw, server_side=True) as tls:
                report["handshake"] = True
                report["resumed"] = tls.session_reused
                data = tls.recv(4096)
                report["received"] = data.decode("latin-1")
                if echo and data:
                    tls.sendall(data)
                    while True:
                        more = tls.recv(65536)
                        if not more:
                            break
                        tls.sendall(more)
        except (OSError, ssl.SSLError) as e:
            report["error"] = f"{type(e).__name__}: {e}"
        finally:
            raw.close()
        print(json.dumps(report), flush=True)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _tls_once(ctx, host, port, send, timeout, deadline, session):
    """One TLS connection of tls_probe; returns its report and the session it ended with."""
    out: dict = {"handshake": False, "received": "", "error": None}
    sock = socket.create_connection((host, port), timeout=timeout)
    out["local"] = "%s:%d" % sock.getsockname()[:2]
    try:
        try:
            tls = ctx.wrap_socket(sock, server_hostname="mesh.invalid", session=session)
        except (OSError, ssl.SSLError) as e:
            out["error"] = f"handshake: {type(e).__name__}: {e}"
            return out, None
        sock = tls
        out["handshake"] = True
        out["version"] = tls.version()
        out["cipher"] = tls.cipher()[0]
        out["resumed"] = tls.session_reused
        der = tls.getpeercert(binary_form=True)
        if der:
            peer = x509.load_der_x509_certificate(der)
            out["peer_serial"] = format(peer.serial_number, "x")
            try:
                san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                out["peer_uris"] = san.get_values_for_type(x509.UniformResourceIdentifier)
            except x509.ExtensionNotFound:
                out["peer_uris"] = []
        try:
            if send:
                tls.sendall(send)
            got, err = _read_some(tls, len(send), deadline)
        except (OSError, ssl.SSLError) as e:
            got, err = b"", f"{type(e).__name__}: {e}"
        out.update(received=got.decode("latin-1"), error=err)
        # TLS 1.3 tickets arrive after the handshake; by now the echo has been read past them.
        return out, tls.session
    finally:
        sock.close()


def tool(argv: list[str]) -> int:
    """Entry point for the Rust tests (`python3 -c ... certfactory.tool(sys.argv[1:])`):

    variants CA_DIR ZONE WORKLOAD OUTROOT NAME...
                                               writes OUTROOT/NAME/{cert,key}.pem for each NAME
                                               and prints one JSON object {NAME: leaf serial hex}
    probe HOST PORT [--cert F --key F] [--ca F] [--tls12] [--send TEXT] [--raw-hex HEX] [--again]
          [--again-after-expiry]             prints one JSON object (see tls_probe)
    serve --cert F --key F [--ca F] [--echo]   a TLS server (see tls_serve), until killed
    """
    ap = argparse.ArgumentParser(prog="certfactory-tool")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("variants")
    for a in ("ca_dir", "zone", "workload", "outroot"):
        v.add_argument(a)
    v.add_argument("names", nargs="+")
    p = sub.add_parser("probe")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ca")
    p.add_argument("--tls12", action="store_true")
    p.add_argument("--send", default="")
    p.add_argument("--raw-hex")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--again", action="store_true")
    p.add_argument("--again-after-expiry", action="store_true")
    srv = sub.add_parser("serve")
    srv.add_argument("--cert", required=True)
    srv.add_argument("--key", required=True)
    srv.add_argument("--ca")
    srv.add_argument("--echo", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        tls_serve(args.cert, args.key, args.ca, args.echo)
        return 0
    if args.cmd == "variants":
        serials = {
            n: write_ca_leaf_variant(args.ca_dir, n, args.zone, args.workload, os.path.join(args.outroot, n))
            for n in args.names
        }
        print(json.dumps(serials))
        return 0
    raw = bytes.fromhex(args.raw_hex) if args.raw_hex is not None else None
    res = tls_probe(args.host, args.port, args.cert, args.key, args.ca, args.tls12,
                    args.send.encode(), raw, args.timeout, args.again, args.again_after_expiry)
    print(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write good and bad SVID test certificates.")
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    generate(args.outdir)
    print(os.path.join(args.outdir, "manifest.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
