#!/usr/bin/env python3
"""A client of the `mesh-ca serve` API for the zt-mesh tests, written with only the Python
standard library (`ssl`, `http.client`) and `cryptography`, sharing no code with mesh-ca.

Every subcommand prints JSON on stdout (one object, or one object per line for `burst`) and
exits 0 whatever the server answered: the Rust tests judge the answers. Exit status 2 means the
tool itself was misused.

    csr --key-out F --csr-out F [--key-type p256|p384|rsa1024|rsa2048|ed25519] [--uri U]...
        [--dns D]... [--cn CN] [--ca] [--long-validity] [--tamper signature|key]
            writes a private key and a PKCS#10 CSR (PEM); prints {"public_key": PEM}
    leaf --ca-dir D --zone Z --workload W --out DIR [--expired | --foreign]
            a leaf X.509-SVID signed by the intermediate of an unencrypted mesh-ca CA (or by a
            freshly made foreign CA), written as DIR/cert.pem (leaf + issuer) and DIR/key.pem;
            prints {"serial": hex}
    request --url https://HOST:PORT --bundle F [--cert F --key F] METHOD PATH
        [--json TEXT | --body-file F | --body-bytes N] [--repeat N] [--announce]
            one HTTPS request (or N on one keep-alive connection); prints
            {"status", "json", "text", "error", "statuses"}, where status/json/text are the
            first reply that is not 2xx, or else the last one; `error` is set when the TLS
            handshake or the connection failed (an alert shows as "...ALERT...").
            --announce prints {"sent": true} (one line) once the request is written.
    race --url U --bundle F --token T --n N
            N enrollments with one token, on N connections, released at once by a barrier;
            prints {"results": [{"status", "json", "error"}...]}
    burst --url U --bundle F --token T --threads N --max M
            enrollments in N threads until M answers or the server goes away; prints one line
            per answer {"status", "serial", "error"} as soon as it arrives
    resume --url U --bundle F --cert F --key F [--json TEXT] METHOD PATH
            GET /v1/bundle with the client certificate (a full handshake), waits until that
            certificate has expired, then sends METHOD PATH offering the first connection's TLS
            session; prints {"first": reply, "second": reply + "resumed"}
    describe FILE
            what the first certificate of a PEM file says: {"serial", "uris", "dns", "ca",
            "key_usage", "eku", "extensions", "not_before", "not_after", "public_key", "subject"}
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import secrets
import socket
import ssl
import sys
import threading
from urllib.parse import urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.timezone.utc
TIMEOUT = 70.0  # above the API's longest long-poll (60 s)


# ---------------------------------------------------------------------------------------------
# Keys and CSRs
# ---------------------------------------------------------------------------------------------


def new_key(kind: str):
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise SystemExit(f"unknown key type {kind}")


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pub_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def spki_der(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def der_to_pem(der: bytes, label: str) -> str:
    import base64

    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def make_csr(
    key,
    uris=(),
    dns=(),
    cn: str | None = None,
    ca: bool = False,
    long_validity: bool = False,
) -> x509.CertificateSigningRequest:
    """A CSR asking for everything a CA must not grant on request: other names, CA powers,
    a long validity (PrivateKeyUsagePeriod), extra key usages."""
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or "workload")])
    )
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    if long_validity:
        now = dt.datetime.now(UTC).replace(microsecond=0)
        b = b.add_extension(
            x509.PrivateKeyUsagePeriod(not_before=now, not_after=now + dt.timedelta(days=3650)),
            critical=False,
        )
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(key, algo)


def tamper(csr_der: bytes, how: str) -> bytes:
    """`signature`: flips a bit of the signature's last byte (still well-formed DER).
    `key`: swaps in another P-256 key's SubjectPublicKeyInfo (same length), keeping the
    signature made with the first key: a CSR for a key the requester does not hold."""
    der = bytearray(csr_der)
    if how == "signature":
        der[-1] ^= 0x01
        return bytes(der)
    if how == "key":
        csr = x509.load_der_x509_csr(csr_der)
        old = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        new = spki_der(ec.generate_private_key(ec.SECP256R1()))
        i = bytes(der).find(old)
        if i < 0 or len(new) != len(old):
            raise RuntimeError("the SPKI was not found where expected")
        der[i : i + len(old)] = new
        return bytes(der)
    raise SystemExit(f"unknown tampering {how}")


# ---------------------------------------------------------------------------------------------
# Leaves made outside the CA (expired, foreign)
# ---------------------------------------------------------------------------------------------


def random_serial() -> int:
    b = bytearray(secrets.token_bytes(16))
    b[0] = (b[0] & 0x7F) or 1
    return int.from_bytes(bytes(b), "big")


def ku_leaf() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def ku_ca() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def sign_cert(subject_cn, uri, pub, issuer_name, issuer_key, not_before, not_after, ca, aki_from=None):
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .public_key(pub)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(ku_ca() if ca else ku_leaf(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    if not ca:
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    if aki_from is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_from), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_leaf(ca_dir: str, zone: str, workload: str, out: str, expired: bool, foreign: bool) -> str:
    with open(os.path.join(ca_dir, "intermediate.pem"), "rb") as f:
        inter = x509.load_pem_x509_certificate(f.read())
    td = inter.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    td = td.get_values_for_type(x509.UniformResourceIdentifier)[0]  # spiffe://<td>
    now = dt.datetime.now(UTC).replace(microsecond=0)
    if foreign:
        # A whole other CA for the same trust domain name: only the keys differ.
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = sign_cert("foreign root", td, root_key.public_key(), None, root_key,
                         now - dt.timedelta(days=1), now + dt.timedelta(days=30), True)
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter = sign_cert("foreign intermediate", td, inter_key.public_key(), root.subject, root_key,
                          now - dt.timedelta(days=1), now + dt.timedelta(days=20), True,
                          aki_from=root_key.public_key())
    else:
        with open(os.path.join(ca_dir, "intermediate.key.pem"), "rb") as f:
            inter_key = serialization.load_pem_private_key(f.read(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        # Inside the intermediate's validity (so only the expiry is wrong), ended an hour ago.
        nb = max(inter.not_valid_before_utc, now - dt.timedelta(hours=3))
        nb, na = nb, min(now - dt.timedelta(hours=1), nb + dt.timedelta(hours=1))
        if na <= nb:
            na = now - dt.timedelta(seconds=90)
            nb = na - dt.timedelta(seconds=60)
    else:
        nb, na = now - dt.timedelta(minutes=1), now + dt.timedelta(hours=1)
    leaf = sign_cert(workload, f"{td}/ns/{zone}/sa/{workload}", key.public_key(), inter.subject, inter_key,
                     nb, na, False, aki_from=inter_key.public_key())
    os.makedirs(out, exist_ok=True)
    pem = serialization.Encoding.PEM
    with open(os.path.join(out, "cert.pem"), "wb") as f:
        f.write(leaf.public_bytes(pem) + inter.public_bytes(pem))
    with open(os.path.join(out, "key.pem"), "wb") as f:
        f.write(key_pem(key))
    os.chmod(os.path.join(out, "key.pem"), 0o600)
    return format(leaf.serial_number, "x")


def describe_cert(path: str) -> dict:
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificates(f.read())[0]
    exts = cert.extensions
    out: dict = {
        "serial": format(cert.serial_number, "x"),
        "subject": cert.subject.rfc4514_string(),
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
        "public_key": pub_pem_of(cert.public_key()),
        "extensions": sorted(e.oid.dotted_string for e in exts),
        "uris": [],
        "dns": [],
        "ca": None,
        "key_usage": [],
        "eku": [],
    }
    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
        out["uris"] = san.get_values_for_type(x509.UniformResourceIdentifier)
        out["dns"] = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    try:
        out["ca"] = exts.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        pass
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
        for name in ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                     "key_agreement", "key_cert_sign", "crl_sign"):
            if getattr(ku, name):
                out["key_usage"].append(name)
    except x509.ExtensionNotFound:
        pass
    try:
        out["eku"] = [o._name for o in exts.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        pass
    return out


def pub_pem_of(pub) -> str:
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# ---------------------------------------------------------------------------------------------
# HTTPS
# ---------------------------------------------------------------------------------------------


def context(bundle: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The CA's certificate is an X.509-SVID: a SPIFFE ID, no DNS name to check.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(bundle)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def connect(url: str, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    u = urlparse(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=TIMEOUT)
    conn.connect()
    return conn


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def answer(resp: http.client.HTTPResponse) -> dict:
    raw = resp.read()
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return {"status": resp.status, "json": body, "text": text[:2000], "error": None, "allow": resp.getheader("Allow")}


def one_request(conn, method: str, path: str, body: bytes | None, announce: bool = False) -> dict:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        conn.request(method, path, body=body, headers=headers)
    except (OSError, ssl.SSLError) as e:
        # The server may have answered before the request was written (a 413 for a body it
        # stopped reading, or an alert refusing our certificate) and closed: the write fails,
        # and its answer is still there to be read, as a client reading while writing would.
        if conn.sock is None:
            raise
        try:
            resp = http.client.HTTPResponse(conn.sock, method=method)
            resp.begin()
        except (OSError, ssl.SSLError, http.client.HTTPException) as early:
            if isinstance(early, ssl.SSLError) and "alert" in str(early).lower():
                raise early from e
            raise e from None
        return answer(resp)
    if announce:
        print(json.dumps({"sent": True}), flush=True)
    return answer(conn.getresponse())


def cmd_request(a) -> dict:
    body = None
    if a.json is not None:
        body = a.json.encode()
    elif a.body_file:
        with open(a.body_file, "rb") as f:
            body = f.read()
    elif a.body_bytes is not None:
        body = b"{" + b'"csr": "' + b"A" * a.body_bytes + b'"}'
    out = {"status": None, "json": None, "text": "", "error": None, "statuses": []}
    try:
        conn = connect(a.url, context(a.bundle, a.cert, a.key))
    except (OSError, ssl.SSLError) as e:
        out["error"] = "connect: " + describe(e)
        return out
    try:
        refused = False
        for _ in range(a.repeat):
            r = one_request(conn, a.method, a.path, body, a.announce)
            # The first refusal is the reply worth reporting: in a flood, a later request
            # may be allowed again once the limiter has refilled.
            if not refused:
                out.update(r)
                refused = not 200 <= (r["status"] or 0) < 300
            out["statuses"].append(r["status"])
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        # In TLS 1.3 the server judges the client certificate after the client has finished
        # its side of the handshake: its refusal (an alert) arrives on the first read.
        out["error"] = describe(e)
    finally:
        conn.close()
    return out


def cmd_resume(a) -> dict:
    """Two connections, the second resuming the first's session after the cert expired."""
    import time

    ctx = context(a.bundle, a.cert, a.key)
    u = urlparse(a.url)
    out: dict = {"first": None, "second": None}
    conn = connect(a.url, ctx)
    try:
        out["first"] = one_request(conn, "GET", "/v1/bundle", None)
        session = conn.sock.session
    finally:
        conn.close()
    with open(a.cert, "rb") as f:
        not_after = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc
    wait = (not_after - dt.datetime.now(UTC)).total_seconds() + 1.5
    time.sleep(max(0.0, wait))
    second: dict = {"status": None, "json": None, "text": "", "error": None, "resumed": None}
    try:
        raw = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT)
        tls = ctx.wrap_socket(raw, server_hostname=u.hostname, session=session)
        second["resumed"] = tls.session_reused
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=TIMEOUT)
        conn.sock = tls
        try:
            body = a.json.encode() if a.json is not None else None
            second.update(one_request(conn, a.method, a.path, body))
        finally:
            conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        second["error"] = describe(e)
    out["second"] = second
    return out


def enroll_body(token: str) -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key).public_bytes(serialization.Encoding.PEM).decode()
    return json.dumps({"token": token, "csr": csr}).encode(), pub_pem(key)


def cmd_race(a) -> dict:
    ctx = context(a.bundle, None, None)
    bodies = [enroll_body(a.token)[0] for _ in range(a.n)]
    conns = [connect(a.url, ctx) for _ in range(a.n)]
    barrier = threading.Barrier(a.n)
    results: list = [None] * a.n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = one_request(conns[i], "POST", "/v1/enroll", bodies[i])
        except (OSError, ssl.SSLError, http.client.HTTPException, threading.BrokenBarrierError) as e:
            results[i] = {"status": None, "json": None, "error": describe(e)}
        finally:
            conns[i].close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"results": results}


def cmd_burst(a) -> None:
    ctx = context(a.bundle, None, None)
    lock = threading.Lock()
    count = [0]

    def emit(obj: dict) -> bool:
        with lock:
            if count[0] >= a.max:
                return False
            count[0] += 1
            print(json.dumps(obj), flush=True)
            return True

    def run() -> None:
        conn = None
        while True:
            body, _ = enroll_body(a.token)
            try:
                if conn is None:
                    conn = connect(a.url, ctx)
                r = one_request(conn, "POST", "/v1/enroll", body)
            except (OSError, ssl.SSLError, http.client.HTTPException) as e:
                # The server went away (the test kills it): report and stop this thread.
                emit({"status": None, "serial": None, "error": describe(e)})
                return
            serial = (r["json"] or {}).get("serial") if r["status"] == 200 else None
            if not emit({"status": r["status"], "serial": serial, "error": None,
                         "code": (r["json"] or {}).get("error")}):
                conn.close()
                return

    threads = [threading.Thread(target=run) for _ in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ca_client")
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("csr")
    c.add_argument("--key-out", required=True)
    c.add_argument("--csr-out", required=True)
    c.add_argument("--key-type", default="p256")
    c.add_argument("--uri", action="append", default=[])
    c.add_argument("--dns", action="append", default=[])
    c.add_argument("--cn")
    c.add_argument("--ca", action="store_true")
    c.add_argument("--long-validity", action="store_true")
    c.add_argument("--tamper", choices=["signature", "key"])

    lf = sub.add_parser("leaf")
    lf.add_argument("--ca-dir", required=True)
    lf.add_argument("--zone", required=True)
    lf.add_argument("--workload", required=True)
    lf.add_argument("--out", required=True)
    g = lf.add_mutually_exclusive_group()
    g.add_argument("--expired", action="store_true")
    g.add_argument("--foreign", action="store_true")

    r = sub.add_parser("request")
    r.add_argument("--url", required=True)
    r.add_argument("--bundle", required=True)
    r.add_argument("--cert")
    r.add_argument("--key")
    r.add_argument("method")
    r.add_argument("path")
    b = r.add_mutually_exclusive_group()
    b.add_argument("--json")
    b.add_argument("--body-file")
    b.add_argument("--body-bytes", type=int)
    r.add_argument("--repeat", type=int, default=1)
    r.add_argument("--announce", action="store_true")

    for name in ("race", "burst"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--bundle", required=True)
        p.add_argument("--token", required=True)
        if name == "race":
            p.add_argument("--n", type=int, default=20)
        else:
            p.add_argument("--threads", type=int, default=4)
            p.add_argument("--max", type=int, default=1000)

    d = sub.add_parser("describe")
    d.add_argument("file")

    rs = sub.add_parser("resume")
    rs.add_argument("--url", required=True)
    rs.add_argument("--bundle", required=True)
    rs.add_argument("--cert", required=True)
    rs.add_argument("--key", required=True)
    rs.add_argument("--json")
    rs.add_argument("method")
    rs.add_argument("path")

    a = ap.parse_args(argv)
    if a.cmd == "describe":
        print(json.dumps(describe_cert(a.file)))
    elif a.cmd == "csr":
        key = new_key(a.key_type)
        csr = make_csr(key, a.uri, a.dns, a.cn, a.ca, a.long_validity)
        der = csr.public_bytes(serialization.Encoding.DER)
        if a.tamper:
            der = tamper(der, a.tamper)
        with open(a.key_out, "wb") as f:
            f.write(key_pem(key))
        with open(a.csr_out, "w") as f:
            f.write(der_to_pem(der, "CERTIFICATE REQUEST"))
        print(json.dumps({"public_key": pub_pem(key)}))
    elif a.cmd == "leaf":
        print(json.dumps({"serial": make_leaf(a.ca_dir, a.zone, a.workload, a.out, a.expired, a.foreign)}))
    elif a.cmd == "request":
        print(json.dumps(cmd_request(a)))
    elif a.cmd == "race":
        print(json.dumps(cmd_race(a)))
    elif a.cmd == "burst":
        cmd_burst(a)
    elif a.cmd == "resume":
        print(json.dumps(cmd_resume(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
