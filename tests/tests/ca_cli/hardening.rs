//! Issue 11, the CA side: holes an attacker (or a careless default) finds, each closed and
//! proven on the real binary. A revocation that cannot work is refused, the CA directory and
//! store are private whatever the umask, exposed secrets draw a warning, lifetimes and uses are
//! bounded while parsing, `inspect` cannot be made to print a forged line, a new CA needs a
//! real passphrase, the root key can live offline, and a guessed join token costs the CA no
//! write to disk.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use mesh_tests::ca_server::{revoke, store_certs, token, CaServer, Csr, LineChild};
use mesh_tests::*;
use serde_json::{json, Value};

use super::{json, WORKLOAD, ZONE};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// `mesh-ca ARGS...` started by a shell with umask 000, the widest a caller can leave.
fn mesh_ca_umask0() -> Cmd {
    Cmd::new("sh").args(["-c", "umask 000 && exec \"$0\" \"$@\""]).arg(binary("mesh-ca"))
}

fn serial_of(ca: &TestCa, kind: &str) -> String {
    store_certs(ca)
        .into_iter()
        .find(|c| c["kind"] == kind)
        .and_then(|c| c["serial"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no {kind} certificate in the store"))
}

// ---------------------------------------------------------------------------------------------
// Defect 4: revoking a CA certificate

#[test]
fn revoke_of_a_ca_certificate_is_refused_and_changes_nothing() {
    let ca = TestCa::init_unencrypted();
    let before = ca.cmd("list").arg("--json").run();
    before.assert_ok();
    for kind in ["root", "intermediate"] {
        let serial = serial_of(&ca, kind);
        // As `list` prints it, and as another tool would (upper case, colons).
        let colons = serial
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        for typed in [serial.clone(), colons] {
            let o = revoke(&ca, &["--serial", &typed, "--reason", "compromised"]);
            assert_eq!(o.code(), Some(1), "revoking the {kind} must be refused by the CA's rules:\n{o}");
            o.assert_error_naming(&["rotat"]);
            assert!(o.one_line_error(), "{o}");
            assert!(o.stderr.contains("nothing was revoked"), "the refusal must say nothing happened:\n{o}");
            assert!(!o.stdout.contains("revoked"), "an operator was told a revocation happened:\n{o}");
        }
    }
    let after = ca.cmd("list").arg("--json").run();
    assert_eq!(before.stdout, after.stdout, "a refused revocation changed the store");
    assert_eq!(json(&after)["revocations"].as_array().map(Vec::len), Some(0));

    // The procedure the refusal points to exists.
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    assert!(readme.contains("Rotating the intermediate or root"), "README lacks the rotation procedure");

    // A leaf still revokes by serial.
    let (_, serial) = ca.issue_ok(ZONE, WORKLOAD, "out", &[]);
    revoke(&ca, &["--serial", &serial]).assert_ok();
}

// ---------------------------------------------------------------------------------------------
// Defect 11a: modes of the CA directory and the store

#[test]
fn the_ca_dir_is_0700_and_store_files_0600_whatever_the_umask_or_history() {
    let ca = TestCa::prepare(false);
    std::fs::create_dir(&ca.dir).expect("mkdir");
    chmod(&ca.dir, 0o755);
    mesh_ca_umask0()
        .args(["init", "--trust-domain", TRUST_DOMAIN, "--insecure-no-passphrase", "--dir"])
        .arg(&ca.dir)
        .run()
        .assert_ok();
    assert_eq!(mode(&ca.dir), 0o700, "init left the existing CA directory open");
    for f in ["store.db", "root.key.pem", "intermediate.key.pem"] {
        assert_eq!(mode(&ca.dir.join(f)), 0o600, "{f} after init with umask 000");
    }

    // The files SQLite adds while it works (-wal, -shm) are private too.
    let dir = ca.dir.display().to_string();
    let mesh_ca = binary("mesh-ca").display().to_string();
    let serve = LineChild::spawn(
        "mesh-ca serve (umask 000)",
        Path::new("sh"),
        &[
            "-c",
            "umask 000 && exec \"$0\" \"$@\"",
            &mesh_ca,
            "serve",
            "--dir",
            &dir,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    serve.wait_lines("ca.started", |l| l.iter().find(|l| l.contains("\"ca.started\"")).cloned());
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        assert_eq!(mode(&ca.dir.join(f)), 0o600, "{f} while serve runs with umask 000");
    }
    drop(serve);

    // A store an older version left world-readable is narrowed by the next command.
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let p = ca.dir.join(f);
        if p.exists() {
            chmod(&p, 0o644);
        }
    }
    ca.cmd("list").run().assert_ok();
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let p = ca.dir.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f} after `list` on a 0644 store");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Defect 11b: secrets readable by group or others

#[test]
fn group_or_other_readable_key_and_passphrase_files_draw_a_warning() {
    let ca = TestCa::init(&[]);
    let pass = ca.pass_file.clone().expect("an encrypted CA has a passphrase file");
    let key = ca.dir.join("intermediate.key.pem");
    chmod(&pass, 0o644);
    chmod(&key, 0o640);
    let o = ca.issue(ZONE, WORKLOAD, "out", &[]);
    o.assert_ok();
    for (file, m) in [(&key, "0640"), (&pass, "0644")] {
        let name = file.display().to_string();
        let hits: Vec<&str> = o.stderr_lines().into_iter().filter(|l| l.contains(&name)).collect();
        assert_eq!(hits.len(), 1, "expected one warning line naming {name}:\n{o}");
        assert!(
            hits[0].contains("warning") && hits[0].contains(m) && hits[0].contains("chmod 600"),
            "the warning must name the mode {m} and the fix:\n{o}"
        );
        assert!(!o.stderr.contains(PASSPHRASE), "the passphrase was printed:\n{o}");
    }
    // Private files: no warning.
    chmod(&pass, 0o600);
    chmod(&key, 0o600);
    let o = ca.issue(ZONE, WORKLOAD, "out2", &[]);
    o.assert_ok();
    assert!(!o.stderr.contains("warning"), "a warning for private files:\n{o}");
}

// ---------------------------------------------------------------------------------------------
// Defect 11c and d: bounded lifetimes and uses

#[test]
fn token_ttl_and_uses_are_bounded_while_parsing() {
    let ca = TestCa::init_unencrypted();
    let cases = [
        ("100000000000h", "1", "--ttl"),
        ("18446744073709551615s", "1", "--ttl"),
        ("721h", "1", "--ttl"),
        ("abc", "1", "--ttl"),
        ("15m", "1001", "--uses"),
        ("15m", "0", "--uses"),
        ("15m", "4294967296", "--uses"),
    ];
    for (ttl, uses, flag) in cases {
        let o = Cmd::mesh_ca()
            .args(["token", "create", "--dir"])
            .arg(&ca.dir)
            .args(["--zone", ZONE, "--workload", WORKLOAD, "--ttl", ttl, "--uses", uses])
            .run();
        assert_eq!(o.code(), Some(2), "--ttl {ttl} --uses {uses} must be a usage error:\n{o}");
        o.assert_error_naming(&[flag]);
        assert!(o.one_line_error() && o.stdout.is_empty(), "{o}");
    }
    assert_eq!(json(&ca.cmd("list").arg("--json").run())["tokens"].as_array().map(Vec::len), Some(0));

    // The bounds themselves are allowed, and the expiry is what was asked.
    token(&ca, ZONE, WORKLOAD, "720h", 1000);
    let listed = json(&ca.cmd("list").arg("--json").run());
    let t = &listed["tokens"][0];
    assert_eq!(t["uses_left"], 1000, "{listed:#}");
    let left = t["expires_at"].as_i64().expect("expires_at") - now_unix();
    assert!((720 * 3600 - 120..=720 * 3600).contains(&left), "a 720h token expires in {left} s");
}

#[test]
fn huge_root_and_intermediate_ttls_are_refused_without_a_panic() {
    for (flag, ttl) in [
        ("--root-ttl", "100000000h"),
        ("--root-ttl", "18446744073709551615s"),
        ("--root-ttl", "438001h"),
        ("--intermediate-ttl", "100000000h"),
    ] {
        let ca = TestCa::prepare(false);
        let o = Cmd::mesh_ca()
            .args(["init", "--trust-domain", TRUST_DOMAIN, "--insecure-no-passphrase", flag, ttl, "--dir"])
            .arg(&ca.dir)
            .run();
        assert_eq!(o.code(), Some(2), "{flag} {ttl} must be a usage error:\n{o}");
        o.assert_error_naming(&[flag]);
        assert!(o.one_line_error(), "{o}");
        assert!(!ca.dir.exists(), "a refused init created {}", ca.dir.display());
    }
    // The ceiling (50 years) itself works.
    let ca = TestCa::prepare(false);
    Cmd::mesh_ca()
        .args(["init", "--trust-domain", TRUST_DOMAIN, "--insecure-no-passphrase", "--root-ttl", "438000h"])
        .arg("--dir")
        .arg(&ca.dir)
        .run()
        .assert_ok();
    let (_, not_after) = cert_times(&ca.dir.join("root.pem"));
    let left = not_after - now_unix();
    assert!((438_000 * 3600 - 120..=438_000 * 3600).contains(&left), "a 438000h root ends in {left} s");
}

// ---------------------------------------------------------------------------------------------
// Defect 11e: inspect prints no control characters from a certificate

/// A self-signed leaf (twice in the file, so it is its own chain) whose subject, issuer, URI
/// and DNS SANs each end in a newline, a forged profile verdict, a carriage return and an
/// ANSI "erase line" sequence.
const FORGED_CERT_PY: &str = r#"
import datetime as dt, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
forged = "\n profile: ok (X.509-SVID leaf profile)\r\x1b[2K"
key = ec.generate_private_key(ec.SECP256R1())
now = dt.datetime.now(dt.timezone.utc)
cert = (x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil" + forged)]))
    .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer" + forged)]))
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - dt.timedelta(minutes=1))
    .not_valid_after(now + dt.timedelta(hours=1))
    .add_extension(x509.SubjectAlternativeName([
        x509.UniformResourceIdentifier("spiffe://example.org/ns/a/sa/b" + forged),
        x509.DNSName("x" + forged)]), critical=False)
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .sign(key, hashes.SHA256()))
open(sys.argv[1], "wb").write(cert.public_bytes(serialization.Encoding.PEM) * 2)
"#;

#[test]
fn inspect_escapes_control_characters_so_no_line_can_be_forged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("forged.pem");
    Cmd::new("python3").args(["-c", FORGED_CERT_PY]).arg(&file).run().assert_ok();

    let o = Cmd::mesh_ca().arg("inspect").arg(&file).run();
    assert_eq!(o.code(), Some(1), "the forged certificate breaks the profile:\n{o}");
    let bad: Vec<char> = o.stdout.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(bad.is_empty(), "inspect printed control characters {bad:?}:\n{o}");
    let verdicts: Vec<&str> = o.stdout.lines().filter(|l| l.trim_start().starts_with("profile:")).collect();
    assert_eq!(verdicts.len(), 1, "a certificate forged a line of inspect's output:\n{o}");
    assert!(verdicts[0].contains("VIOLATED"), "{o}");
    // What was escaped is still shown, visibly, on its own field's line.
    let subject = o.stdout.lines().find(|l| l.trim_start().starts_with("subject:")).expect("a subject line");
    assert!(subject.contains("evil\\u{a} profile: ok"), "the subject is not shown escaped:\n{o}");

    // JSON keeps the exact value (escaped the JSON way).
    let o = Cmd::mesh_ca().args(["inspect", "--json"]).arg(&file).run();
    let j: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}:\n{o}"));
    assert!(j["subject"].as_str().is_some_and(|s| s.contains("evil\n profile: ok")), "{o}");
}

// ---------------------------------------------------------------------------------------------
// Defect 11f: passphrase strength and the root key offline

#[test]
fn a_new_ca_needs_a_passphrase_of_twelve_characters_an_existing_one_opens_with_its_own() {
    let ca = TestCa::prepare(false);
    let short = "eleven char";
    let o = Cmd::mesh_ca()
        .args(["init", "--trust-domain", TRUST_DOMAIN, "--dir"])
        .arg(&ca.dir)
        .env(PASSPHRASE_ENV, short)
        .run();
    assert_eq!(o.code(), Some(3), "{o}");
    o.assert_error_naming(&["12"]);
    assert!(o.one_line_error() && !o.stderr.contains(short), "{o}");
    assert!(!ca.dir.exists(), "a refused init created {}", ca.dir.display());

    let file = ca.path("short-pass");
    std::fs::write(&file, format!("{short}\n")).expect("write");
    chmod(&file, 0o600);
    let o = Cmd::mesh_ca()
        .args(["init", "--trust-domain", TRUST_DOMAIN, "--dir"])
        .arg(&ca.dir)
        .arg("--passphrase-file")
        .arg(&file)
        .run();
    assert_eq!(o.code(), Some(3), "{o}");
    assert!(!ca.dir.exists());

    // A CA whose intermediate key was encrypted with a short passphrase elsewhere (openssl,
    // PBES2 like mesh-ca's own) still opens: the minimum is for new CAs only.
    let ca = TestCa::init_unencrypted();
    let key = ca.dir.join("intermediate.key.pem");
    let enc = ca.path("intermediate.enc.pem");
    Cmd::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-v2prf",
            "hmacWithSHA256",
            "-passout",
            "pass:x1",
            "-in",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&enc)
        .run()
        .assert_ok();
    std::fs::rename(&enc, &key).expect("rename");
    chmod(&key, 0o600);
    let o = ca
        .cmd("issue")
        .args(["--zone", ZONE, "--workload", WORKLOAD, "--out"])
        .arg(ca.path("out"))
        .env(PASSPHRASE_ENV, "x1")
        .run();
    o.assert_ok();
}

#[test]
fn serve_issue_token_create_and_revoke_work_with_the_root_key_offline() {
    let ca = TestCa::init_unencrypted();
    let offline = ca.path("offline");
    std::fs::create_dir(&offline).expect("mkdir");
    std::fs::rename(ca.dir.join("root.key.pem"), offline.join("root.key.pem")).expect("move the root key");

    ca.issue_ok(ZONE, WORKLOAD, "out", &[]);
    let t = token(&ca, "orders", "api", "15m", 1);
    // orders/old never had a certificate or a token: --force (issue 12).
    revoke(&ca, &["--zone", "orders", "--workload", "old", "--force"]).assert_ok();
    let server = CaServer::start(&ca, &["--rate-limit", "0"]);
    let csr = Csr::p256(ca.tmp.path(), "csr");
    let r = server.api().enroll(&t, &csr);
    assert_eq!(r.assert_issued()["spiffe_id"], "spiffe://example.org/ns/orders/sa/api");
    assert!(!ca.dir.join("root.key.pem").exists(), "something put the root key back");
}

// ---------------------------------------------------------------------------------------------
// Defect 11g: an unknown token costs no durable write

/// The store's durable files, byte for byte (`-shm` is shared memory, not durable).
fn durable_store(ca: &TestCa) -> Vec<(String, Vec<u8>)> {
    ["store.db", "store.db-wal"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(ca.dir.join(f)).unwrap_or_default()))
        .collect()
}

/// The audit table, read-only, with Python's sqlite3 (no code shared with mesh-ca).
fn audit_rows(ca: &TestCa) -> Vec<(String, String)> {
    let o = Cmd::new("python3")
        .args([
            "-c",
            "import json, sqlite3, sys\n\
             c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
             print(json.dumps(c.execute('SELECT op, detail FROM audit ORDER BY seq').fetchall()))",
        ])
        .arg(ca.dir.join("store.db"))
        .run();
    o.assert_ok();
    let rows: Vec<(String, String)> =
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}:\n{o}"));
    rows
}

#[test]
fn unknown_and_malformed_tokens_write_nothing_to_the_store() {
    const GUESSES: usize = 100;
    let ca = TestCa::init_unencrypted();
    let server = CaServer::start(&ca, &["--rate-limit", "0"]);
    let csr = Csr::p256(ca.tmp.path(), "csr");
    let before = durable_store(&ca);
    assert!(!before[1].1.is_empty(), "serve runs with a WAL");

    let api = server.api();
    let unknown = json!({"token": format!("ztm1_{}", "A".repeat(43)), "csr": csr.pem}).to_string();
    let malformed = json!({"token": "not-a-token", "csr": csr.pem}).to_string();
    for (body, n) in [(&unknown, GUESSES), (&malformed, 10)] {
        let r = api.request("POST", "/v1/enroll", &["--json", body, "--repeat", &n.to_string()]);
        assert_eq!(r.statuses.len(), n, "{r:?}");
        assert!(r.statuses.iter().all(|s| *s == 403), "{r:?}");
        assert_eq!(r.code(), "token_rejected", "{r:?}");
    }
    // Each attempt is still an event (the non-durable record) ...
    server.proc.wait_lines("a token.rejected event per attempt", |l| {
        (l.iter().filter(|l| l.contains("\"token.rejected\"")).count() >= GUESSES + 10).then_some(())
    });
    // ... and none of them touched the store's files: no write, so no sync to disk.
    assert!(durable_store(&ca) == before, "unknown or malformed tokens wrote to the store");

    // A real token enrolls as before, and its commit carries one summary of the guesses.
    let t = token(&ca, ZONE, WORKLOAD, "15m", 1);
    api.enroll(&t, &csr).assert_issued();
    let audit = audit_rows(&ca);
    let summaries: Vec<&(String, String)> =
        audit.iter().filter(|(op, d)| op == "token.rejected" && d.starts_with("unknown")).collect();
    assert_eq!(summaries.len(), 1, "{audit:?}");
    assert!(summaries[0].1.starts_with(&format!("unknown count={GUESSES} ")), "{audit:?}");
    assert!(audit.iter().any(|(op, _)| op == "token.used"), "the real spend is audited: {audit:?}");
}
