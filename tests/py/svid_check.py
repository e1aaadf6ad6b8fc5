#!/usr/bin/env python3
"""Independent checker for the zt-mesh X.509-SVID profile.

Written from the SPIFFE specifications (SPIFFE-ID.md and X509-SVID.md in
github.com/spiffe/spiffe, standards/) plus the mesh's own stricter choices from
DESIGN.md, and deliberately NOT from the mesh-ca source, so that it can catch
mistakes the Rust code shares with its own checks. It uses only the
`cryptography` package.

Usage:
    python3 svid_check.py --role leaf|ca [--trust-domain TD] [--issuer ISSUER.pem] [--json] FILE.pem...

The FIRST certificate of each FILE is checked. When a FILE holds more than one
certificate, the second is taken as the issuer of the first (unless --issuer is
given) and the issuer-dependent rules run too (signature, validity nesting,
trust domain). With several FILEs, serial numbers must also be distinct across
them.

Exit status: 0 when every certificate satisfies the profile, 1 when any rule is
violated (each violation is printed as "FILE: VIOLATION <rule>: <message>"),
2 when the input could not be checked at all (unreadable file, no certificate).

Rules (stable names, used by the self-tests and the Rust end-to-end tests):
  x509-version                 certificate is X.509 v3
  uri-san-count                exactly one URI SAN
  spiffe-id                    the URI SAN is a syntactically valid SPIFFE ID
  spiffe-id-shape              leaf: spiffe://<td>/ns/<zone>/sa/<workload>, DNS-label zone/workload
  trust-domain                 the ID's trust domain is the expected one (--trust-domain / issuer)
  ca-spiffe-id                 CA: the URI SAN is exactly spiffe://<td>, no path
  basic-constraints            present; leaf cA=false; CA cA=true and critical
  key-usage                    present and critical
  key-usage-digital-signature  leaf: digitalSignature set
  key-usage-cert-sign          leaf: keyCertSign not set; CA: keyCertSign set
  key-usage-crl-sign           leaf: cRLSign not set
  eku                          leaf: extendedKeyUsage has serverAuth and clientAuth
  name-constraints-uri         CA: no URI name constraints
  serial                       positive, at least 9 octets (>= 64 bits of entropy), at most 20
  serial-unique                no two checked certificates share a serial
  validity                     notBefore < notAfter
  validity-within-issuer       issuer's validity covers the certificate's
  issuer-signature             issuer's subject is the certificate's issuer and its key signed it
  key-algorithm                ECDSA P-256 public key
  extensions                   extensions parse (no duplicates, no malformed values)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

# SPIFFE-ID.md section 2.3: "Maximum SPIFFE ID Length: URIs with a maximum length of 2048 bytes".
MAX_ID_BYTES = 2048
# SPIFFE-ID.md section 2.1: trust domain names are at most 255 characters (DNS name bound).
MAX_TD_LEN = 255
# Trust domain characters: lowercase letters, digits, '.', '-', '_' (SPIFFE-ID.md 2.1).
TD_CHARS = re.compile(r"^[a-z0-9._-]+$")
# Path segment characters: letters, digits, '.', '-', '_' (SPIFFE-ID.md 2.2).
SEGMENT_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
# Mesh zone / workload names: RFC 1123 DNS labels, lowercase, 1..63 characters.
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# RFC 5280 4.1.2.2: serials are at most 20 octets. The CA/B Forum and the mesh design ask for
# at least 64 bits of entropy; a positive INTEGER carrying 64 random bits needs more than 8 octets
# once a CA keeps the high bit clear, so 9 octets of magnitude is the floor we accept.
MIN_SERIAL_OCTETS = 9
MAX_SERIAL_OCTETS = 20


@dataclass
class Violation:
    rule: str
    message: str


@dataclass
class Result:
    file: str
    role: str
    spiffe_id: str | None = None
    serial: str | None = None
    subject: str | None = None
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def fail(self, rule: str, message: str) -> None:
        self.violations.append(Violation(rule, message))

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "role": self.role,
            "ok": self.ok,
            "spiffe_id": self.spiffe_id,
            "serial": self.serial,
            "subject": self.subject,
            "violations": [{"rule": v.rule, "message": v.message} for v in self.violations],
            "notes": self.notes,
        }


class CheckError(Exception):
    """The input could not be checked at all (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# SPIFFE ID syntax (SPIFFE-ID.md)
# ---------------------------------------------------------------------------------------------


@dataclass
class ParsedId:
    trust_domain: str | None
    segments: list[str] | None  # None when the ID has no path
    problems: list[str]


def parse_spiffe_id(uri: str) -> ParsedId:
    """Parses a SPIFFE ID and lists every way it breaks the SPIFFE ID spec.

    The check is done on the raw string, never through a URL library, so that nothing is
    normalized away (case, dot segments, percent-encoding) before it is judged.
    """
    problems: list[str] = []
    if len(uri.encode("utf-8")) > MAX_ID_BYTES:
        problems.append(f"is {len(uri.encode('utf-8'))} bytes long; the limit is {MAX_ID_BYTES}")
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        if uri.lower().startswith(prefix):
            problems.append("scheme must be lowercase 'spiffe'")
        else:
            problems.append("scheme must be 'spiffe' followed by '://'")
            return ParsedId(None, None, problems)
    rest = uri[len(prefix):]
    if "?" in rest:
        problems.append("has a query component")
        rest = rest.split("?", 1)[0]
    if "#" in rest:
        problems.append("has a fragment component")
        rest = rest.split("#", 1)[0]
    if "%" in rest:
        problems.append("contains percent-encoding")
    authority, slash, path = rest.partition("/")
    td = authority
    if "@" in authority:
        problems.append("has a userinfo component")
        td = authority.rsplit("@", 1)[1]
    if ":" in td:
        problems.append("has a port")
        td = td.split(":", 1)[0]
    if not td:
        problems.append("trust domain is empty")
    elif len(td) > MAX_TD_LEN:
        problems.append(f"trust domain is {len(td)} characters; the limit is {MAX_TD_LEN}")
    if td and not TD_CHARS.match(td):
        if TD_CHARS.match(td.lower()):
            problems.append(f"trust domain {td!r} is not lowercase")
        else:
            problems.append(f"trust domain {td!r} has characters outside [a-z0-9._-]")
    segments: list[str] | None = None
    if slash:
        segments = path.split("/")
        if path == "" or path.endswith("/"):
            problems.append("path has a trailing '/'")
        for seg in segments[:-1] if path.endswith("/") else segments:
            if seg == "":
                problems.append("path has an empty segment")
            elif seg in (".", ".."):
                problems.append(f"path has a {seg!r} segment")
            elif not SEGMENT_CHARS.match(seg):
                problems.append(f"path segment {seg!r} has characters outside [A-Za-z0-9._-]")
    return ParsedId(td or None, segments, problems)


def valid_trust_domain(td: str) -> bool:
    return bool(td) and len(td) <= MAX_TD_LEN and bool(TD_CHARS.match(td))


# ---------------------------------------------------------------------------------------------
# Certificate rules
# ---------------------------------------------------------------------------------------------


def _ext(cert: x509.Certificate, cls):
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def serial_octets(serial: int) -> int:
    return max(1, (serial.bit_length() + 7) // 8)


def check_cert(
    cert: x509.Certificate,
    role: str,
    trust_domain: str | None = None,
    issuer: x509.Certificate | None = None,
    file: str = "<memory>",
) -> Result:
    """Checks one certificate against the leaf or CA profile."""
    res = Result(file=file, role=role)
    res.subject = cert.subject.rfc4514_string()
    res.serial = format(cert.serial_number, "x") if cert.serial_number >= 0 else str(cert.serial_number)

    if cert.version != x509.Version.v3:
        res.fail("x509-version", f"certificate is {cert.version.name}, SVIDs are v3")

    # Touch every extension once: duplicates or malformed values raise here.
    try:
        _ = list(cert.extensions)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a violation, not a crash
        res.fail("extensions", f"extensions do not parse: {exc}")
        return res

    _check_key(cert, res)
    _check_serial(cert, res)
    _check_validity(cert, res)

    expected_td = trust_domain
    issuer_td = None
    if issuer is not None:
        issuer_uris = uri_sans(issuer)
        if len(issuer_uris) == 1:
            parsed = parse_spiffe_id(issuer_uris[0])
            if not parsed.problems and parsed.segments is None:
                issuer_td = parsed.trust_domain
        _check_issuer(cert, issuer, res)
    else:
        res.notes.append("no issuer given: signature and validity nesting not checked")

    uris = uri_sans(cert)
    if len(uris) != 1:
        res.fail("uri-san-count", f"has {len(uris)} URI SANs {uris!r}; an SVID has exactly one")
    if role == "leaf":
        _check_leaf(cert, uris, expected_td, issuer_td, res)
    else:
        _check_ca(cert, uris, expected_td, issuer_td, res)
    return res


def _check_key(cert: x509.Certificate, res: Result) -> None:
    try:
        key = cert.public_key()
    except Exception as exc:  # noqa: BLE001
        res.fail("key-algorithm", f"public key does not parse: {exc}")
        return
    if not isinstance(key, ec.EllipticCurvePublicKey):
        res.fail("key-algorithm", f"public key is {type(key).__name__}, the mesh issues ECDSA P-256 only")
    elif key.curve.name != "secp256r1":
        res.fail("key-algorithm", f"public key is on curve {key.curve.name}, the mesh issues P-256 only")


def _check_serial(cert: x509.Certificate, res: Result) -> None:
    serial = cert.serial_number
    if serial <= 0:
        res.fail("serial", f"serial {serial} is not positive (RFC 5280 4.1.2.2)")
        return
    octets = serial_octets(serial)
    if octets < MIN_SERIAL_OCTETS:
        res.fail(
            "serial",
            f"serial {serial:x} is {octets} octets; at least {MIN_SERIAL_OCTETS} are needed "
            "to carry 64 bits of entropy",
        )
    # DER adds a 0x00 octet when the top bit is set; RFC 5280 counts the encoded octets.
    encoded = serial.bit_length() // 8 + 1
    if encoded > MAX_SERIAL_OCTETS:
        res.fail("serial", f"serial is {encoded} octets encoded; RFC 5280 allows at most 20")


def _check_validity(cert: x509.Certificate, res: Result) -> None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not nb < na:
        res.fail("validity", f"notBefore {nb.isoformat()} is not before notAfter {na.isoformat()}")


def _check_issuer(cert: x509.Certificate, issuer: x509.Certificate, res: Result) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError as exc:
        res.fail("issuer-signature", f"not issued by the given issuer: {exc}")
    except Exception as exc:  # noqa: BLE001 - InvalidSignature, TypeError for odd keys
        res.fail("issuer-signature", f"signature does not verify with the issuer's key ({type(exc).__name__})")
    inb, ina = issuer.not_valid_before_utc, issuer.not_valid_after_utc
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if nb < inb:
        res.fail(
            "validity-within-issuer",
            f"notBefore {nb.isoformat()} precedes the issuer's notBefore {inb.isoformat()}",
        )
    if na > ina:
        res.fail(
            "validity-within-issuer",
            f"notAfter {na.isoformat()} outlives the issuer's notAfter {ina.isoformat()}",
        )


def _check_td(td: str | None, expected: str | None, issuer_td: str | None, res: Result) -> None:
    if td is None:
        return
    if expected is not None and td != expected:
        res.fail("trust-domain", f"trust domain {td!r} is not the expected {expected!r}")
    if issuer_td is not None and td != issuer_td:
        res.fail("trust-domain", f"trust domain {td!r} differs from the issuer's {issuer_td!r}")


def _check_leaf(cert, uris, expected_td, issuer_td, res: Result) -> None:
    for uri in uris:
        parsed = parse_spiffe_id(uri)
        for problem in parsed.problems:
            res.fail("spiffe-id", f"{uri[:120]!r}: {problem}")
    if len(uris) == 1:
        uri = uris[0]
        res.spiffe_id = uri
        parsed = parse_spiffe_id(uri)
        segs = parsed.segments
        if parsed.trust_domain is None:
            pass  # not a SPIFFE ID at all: reported under spiffe-id, the shape is moot
        elif segs is None:
            res.fail("spiffe-id-shape", f"{uri!r} has no path; a workload SVID names a workload")
        elif not (
            len(segs) == 4
            and segs[0] == "ns"
            and segs[2] == "sa"
            and DNS_LABEL.match(segs[1])
            and DNS_LABEL.match(segs[3])
        ):
            res.fail(
                "spiffe-id-shape",
                f"{uri[:120]!r} is not spiffe://<td>/ns/<zone>/sa/<workload> with DNS-label names",
            )
        _check_td(parsed.trust_domain, expected_td, issuer_td, res)

    bc = _ext(cert, x509.BasicConstraints)
    if bc is None:
        res.fail("basic-constraints", "basicConstraints is missing; a leaf SVID states cA=false")
    elif bc.value.ca:
        res.fail("basic-constraints", "leaf has cA=true")

    ku = _ext(cert, x509.KeyUsage)
    if ku is None:
        res.fail("key-usage", "keyUsage is missing")
    else:
        if not ku.critical:
            res.fail("key-usage", "keyUsage is not marked critical")
        if not ku.value.digital_signature:
            res.fail("key-usage-digital-signature", "leaf keyUsage lacks digitalSignature")
        if ku.value.key_cert_sign:
            res.fail("key-usage-cert-sign", "leaf keyUsage has keyCertSign")
        if ku.value.crl_sign:
            res.fail("key-usage-crl-sign", "leaf keyUsage has cRLSign")

    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is None:
        res.fail("eku", "extendedKeyUsage is missing; a mesh leaf needs serverAuth and clientAuth")
    else:
        usages = set(eku.value)
        if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
            res.fail("eku", "extendedKeyUsage lacks serverAuth")
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            res.fail("eku", "extendedKeyUsage lacks clientAuth")


def _check_ca(cert, uris, expected_td, issuer_td, res: Result) -> None:
    if len(uris) == 1:
        uri = uris[0]
        res.spiffe_id = uri
        parsed = parse_spiffe_id(uri)
        for problem in parsed.problems:
            res.fail("spiffe-id", f"{uri[:120]!r}: {problem}")
        if parsed.segments is not None:
            res.fail("ca-spiffe-id", f"CA URI SAN {uri[:120]!r} has a path; it must be spiffe://<td>")
        if expected_td is not None and uri != f"spiffe://{expected_td}":
            res.fail("ca-spiffe-id", f"CA URI SAN {uri[:120]!r} is not spiffe://{expected_td}")
        _check_td(parsed.trust_domain, expected_td, issuer_td, res)

    bc = _ext(cert, x509.BasicConstraints)
    if bc is None:
        res.fail("basic-constraints", "basicConstraints is missing; a CA certificate needs cA=true")
    else:
        if not bc.value.ca:
            res.fail("basic-constraints", "CA certificate has cA=false")
        if not bc.critical:
            res.fail("basic-constraints", "basicConstraints is not critical (RFC 5280 4.2.1.9)")

    ku = _ext(cert, x509.KeyUsage)
    if ku is None:
        res.fail("key-usage", "keyUsage is missing")
    else:
        if not ku.critical:
            res.fail("key-usage", "keyUsage is not marked critical")
        if not ku.value.key_cert_sign:
            res.fail("key-usage-cert-sign", "CA keyUsage lacks keyCertSign")

    nc = _ext(cert, x509.NameConstraints)
    if nc is not None:
        subtrees = list(nc.value.permitted_subtrees or []) + list(nc.value.excluded_subtrees or [])
        if any(isinstance(n, x509.UniformResourceIdentifier) for n in subtrees):
            res.fail("name-constraints-uri", "nameConstraints has URI subtrees, which SPIFFE forbids")


# ---------------------------------------------------------------------------------------------
# Files and command line
# ---------------------------------------------------------------------------------------------


def load_pem_chain(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CheckError(f"{path}: no PEM certificate could be parsed: {exc}") from exc
    if not certs:
        raise CheckError(f"{path}: holds no certificate")
    return certs


def check_files(
    paths: list[str], role: str, trust_domain: str | None = None, issuer_path: str | None = None
) -> list[Result]:
    issuer_override = load_pem_chain(issuer_path)[0] if issuer_path else None
    results = []
    seen: dict[int, str] = {}
    for path in paths:
        chain = load_pem_chain(path)
        issuer = issuer_override or (chain[1] if len(chain) > 1 else None)
        res = check_cert(chain[0], role, trust_domain, issuer, file=path)
        serial = chain[0].serial_number
        if serial in seen:
            res.fail("serial-unique", f"serial {serial:x} was already used by {seen[serial]}")
        else:
            seen[serial] = path
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check PEM certificates against the zt-mesh X.509-SVID profile.")
    ap.add_argument("--role", choices=["leaf", "ca"], required=True)
    ap.add_argument("--trust-domain", help="the trust domain the SPIFFE ID must belong to")
    ap.add_argument("--issuer", help="PEM file whose first certificate issued the checked certificate")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    ap.add_argument("files", nargs="+", metavar="FILE.pem")
    args = ap.parse_args(argv)
    if args.trust_domain is not None and not valid_trust_domain(args.trust_domain):
        print(f"--trust-domain {args.trust_domain!r} is not a valid SPIFFE trust domain", file=sys.stderr)
        return 2
    try:
        results = check_files(args.files, args.role, args.trust_domain, args.issuer)
    except CheckError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "results": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            if r.ok:
                print(f"{r.file}: ok ({r.role} {r.spiffe_id}, serial {r.serial})")
            for v in r.violations:
                print(f"{r.file}: VIOLATION {v.rule}: {v.message}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
