//! Test support for the scanner proofs (`tests/tests/scanners.rs`): run third-party TLS
//! scanners (sslyze, testssl.sh), `openssl s_client` probes and pkilint against an endpoint or
//! a certificate, and reduce each report to a list of problems measured against the mesh's
//! TLS profile (TLS 1.3 only, AEAD suites, strong groups and signatures, no renegotiation, no
//! 0-RTT). An empty list means the endpoint passed; every problem names the finding.
//!
//! [`WeakServer`] (an `openssl s_server` with everything old switched on) is the negative
//! control: the same checks must report it, so a check that cannot fail is caught.
//!
//! Nothing here knows how mesh-ca or mesh-proxy build their TLS configs: the scanners and
//! their reports are the only source.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{Cmd, Output};

/// The TLS 1.3 suites the mesh may offer (all three are AEAD).
pub const TLS13_SUITES: [&str; 3] =
    ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

/// Key-exchange groups counted as strong (sslyze's and testssl's names for them).
pub const STRONG_GROUPS: [&str; 9] = [
    "X25519",
    "X448",
    "secp256r1",
    "prime256v1",
    "secp384r1",
    "secp521r1",
    "X25519MLKEM768",
    "SecP256r1MLKEM768",
    "SecP384r1MLKEM1024",
];

/// sslyze's protocol scans that must find the protocol refused.
const SSLYZE_OLD: [&str; 5] = [
    "ssl_2_0_cipher_suites",
    "ssl_3_0_cipher_suites",
    "tls_1_0_cipher_suites",
    "tls_1_1_cipher_suites",
    "tls_1_2_cipher_suites",
];

/// A client certificate for scanners that can present one: the chain file (leaf first, then
/// the intermediate) and its key.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub chain: PathBuf,
    pub key: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// sslyze
// ---------------------------------------------------------------------------------------------

/// Runs `sslyze --json_out OUT --mozilla_config=disable COMMANDS... ADDR` (with `--cert/--key`
/// when `client` is given) and returns that server's result object. Mozilla's profiles are
/// disabled because they judge web-PKI host names; [`sslyze_problems`] judges the rest.
pub fn sslyze(addr: SocketAddr, client: Option<&ClientCert>, commands: &[&str], out: &Path) -> Value {
    let mut c = Cmd::new("sslyze").args(["--quiet", "--mozilla_config=disable", "--json_out"]).arg(out);
    if let Some(cc) = client {
        c = c.arg("--cert").arg(&cc.chain).arg("--key").arg(&cc.key);
    }
    let o = c.args(commands).arg(addr.to_string()).run();
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("sslyze wrote no JSON ({e}):\n{o}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("sslyze JSON: {e}\n{o}"));
    v["server_scan_results"][0].clone()
}

/// What in an sslyze result breaks the profile. `required` are scan names (as in the JSON:
/// `tls_1_3_cipher_suites`, `elliptic_curves`, ...) that must have run to completion.
pub fn sslyze_problems(scan: &Value, required: &[&str]) -> Vec<String> {
    let mut p = Vec::new();
    if scan["connectivity_status"] != "COMPLETED" {
        let trace = scan["connectivity_error_trace"].as_str().unwrap_or("");
        let last = trace.lines().last().unwrap_or("");
        return vec![format!("sslyze could not connect: {last}")];
    }
    let results = &scan["scan_result"];
    for name in required {
        let r = &results[*name];
        if r["status"] != "COMPLETED" {
            let why = r["error_trace"].as_str().unwrap_or("").lines().last().unwrap_or("").to_owned();
            p.push(format!("sslyze {name}: status {} {why}", r["status"]));
        }
    }
    for name in SSLYZE_OLD {
        let r = &results[name]["result"];
        if r.is_object() && (r["is_tls_version_supported"] != false || !empty(&r["accepted_cipher_suites"])) {
            p.push(format!(
                "sslyze {name}: accepted {}",
                suite_names(&r["accepted_cipher_suites"]).join(" ")
            ));
        }
    }
    let t13 = &results["tls_1_3_cipher_suites"]["result"];
    if t13.is_object() {
        if t13["is_tls_version_supported"] != true {
            p.push("sslyze: TLS 1.3 not supported".into());
        }
        for s in suite_names(&t13["accepted_cipher_suites"]) {
            if !TLS13_SUITES.contains(&s.as_str()) {
                p.push(format!("sslyze: TLS 1.3 suite {s} accepted"));
            }
        }
    }
    let curves = &results["elliptic_curves"]["result"];
    for c in curves["supported_curves"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        if !STRONG_GROUPS.contains(&name) {
            p.push(format!("sslyze: weak group {name} accepted"));
        }
    }
    let reneg = &results["session_renegotiation"]["result"];
    if reneg.is_object()
        && (reneg["is_vulnerable_to_client_renegotiation_dos"] != false
            || reneg["client_renegotiations_success_count"] != 0
            || reneg["supports_secure_renegotiation"] != true)
    {
        p.push(format!("sslyze: renegotiation {reneg}"));
    }
    let flags = [
        ("tls_1_3_early_data", "supports_early_data", "0-RTT early data accepted"),
        ("tls_compression", "supports_compression", "TLS compression"),
        ("heartbleed", "is_vulnerable_to_heartbleed", "Heartbleed"),
        ("openssl_ccs_injection", "is_vulnerable_to_ccs_injection", "CCS injection"),
    ];
    for (scan_name, key, what) in flags {
        if results[scan_name]["result"][key] == true {
            p.push(format!("sslyze: {what}"));
        }
    }
    if let Some(robot) = results["robot"]["result"]["robot_result"].as_str() {
        if !robot.starts_with("NOT_VULNERABLE") {
            p.push(format!("sslyze: ROBOT {robot}"));
        }
    }
    p
}

fn empty(v: &Value) -> bool {
    v.as_array().is_none_or(Vec::is_empty)
}

fn suite_names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["cipher_suite"]["name"].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// testssl.sh
// ---------------------------------------------------------------------------------------------

/// A testssl.sh finding rated above LOW that a mesh endpoint shows by design; each says why.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub id: &'static str,
    /// The finding text must start with this.
    pub finding: &'static str,
    pub why: &'static str,
}

/// What testssl.sh rates MEDIUM or above on every SVID, and why the mesh accepts it. Nothing
/// else above LOW is accepted; an expired certificate, for one, is CRITICAL and not listed.
pub const SVID_BY_DESIGN: [Accepted; 4] = [
    Accepted {
        id: "cert_expirationStatus",
        finding: "expires < 30 days",
        why: "SVIDs live an hour by default (at most 24 h) and are renewed at half-life",
    },
    Accepted {
        id: "cert_notAfter",
        finding: "",
        why: "the same short lifetime, reported as the date (testssl rates it like the status)",
    },
    Accepted {
        id: "cert_revocation",
        finding: "Neither CRL nor OCSP URI provided",
        why: "revocations are pushed by the CA API (GET /v1/revocations long-poll), not CRL/OCSP",
    },
    Accepted {
        id: "cert_trust",
        finding: "certificate does not match supplied URI",
        why: "peers are named by the SPIFFE ID in the URI SAN, never by host name or IP",
    },
];

/// The testssl.sh checks the proofs run: protocols, cipher categories, forward secrecy and
/// groups, server defaults (certificate, extensions, resumption), vulnerabilities. Client
/// simulation, header checks and the per-cipher list (sslyze enumerates every suite) are left
/// out to keep the run short.
pub const TESTSSL_CHECKS: [&str; 5] = ["-p", "-s", "-f", "-S", "-U"];

/// Runs `testssl --jsonfile OUT CHECKS... ADDR` (with `--add-ca CA` when given) and returns
/// its findings. testssl.sh 3.0 (Debian's) cannot present a client certificate (`--mtls` came
/// in 3.2); TLS 1.3 negotiates version, suite and group before the server asks for one.
pub fn testssl(addr: SocketAddr, ca: Option<&Path>, checks: &[&str], out: &Path) -> Vec<Value> {
    // One scan at a time in this process: several testssl runs at once on two cores make its
    // own probes time out.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut findings = testssl_once(addr, ca, checks, out);
    // WARN/FATAL are testssl's own trouble, not findings about the server: its first probe
    // is an `openssl s_client` without a client certificate, and against a server that
    // requires one, the refusing alert can race the end of that probe ("Your OpenSSL cannot
    // connect"). Scan again (up to three times in all) and judge the last scan.
    for retry in 1..3 {
        if !findings.iter().any(|f| f["severity"] == "WARN" || f["severity"] == "FATAL") {
            break;
        }
        findings = testssl_once(addr, ca, checks, &out.with_extension(format!("retry{retry}.json")));
    }
    findings
}

fn testssl_once(addr: SocketAddr, ca: Option<&Path>, checks: &[&str], out: &Path) -> Vec<Value> {
    let mut c = Cmd::new("testssl").args(["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none"]);
    if let Some(ca) = ca {
        c = c.arg("--add-ca").arg(ca);
    }
    let o = c
        .args(checks)
        .arg("--jsonfile")
        .arg(out)
        .arg("--logfile")
        .arg(out.with_extension("log"))
        .arg(addr.to_string())
        .run();
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("testssl wrote no JSON ({e}):\n{o}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("testssl JSON: {e}\n{o}"));
    let findings = v.as_array().cloned().unwrap_or_else(|| panic!("testssl JSON is not a list:\n{text}"));
    if findings.iter().any(|f| f["severity"] == "WARN" || f["severity"] == "FATAL") {
        // The transcript says what the scan could not do.
        eprintln!("{o}");
    }
    findings
}

/// The finding of `id` ("" when absent).
pub fn testssl_finding<'a>(findings: &'a [Value], id: &str) -> &'a str {
    findings.iter().find(|f| f["id"] == id).and_then(|f| f["finding"].as_str()).unwrap_or("")
}

/// What in testssl.sh's findings breaks the profile: any finding rated MEDIUM, HIGH,
/// CRITICAL (or a scan problem rated WARN/FATAL) that `accepted` does not list, an old protocol
/// offered, a weak cipher category offered, a weak group, and any expected id missing (a check
/// that did not run proves nothing).
pub fn testssl_problems(findings: &[Value], checks: &[&str], accepted: &[Accepted]) -> Vec<String> {
    let mut p = Vec::new();
    for f in findings {
        let (id, sev) = (f["id"].as_str().unwrap_or("?"), f["severity"].as_str().unwrap_or("?"));
        let text = f["finding"].as_str().unwrap_or("");
        if !matches!(sev, "MEDIUM" | "HIGH" | "CRITICAL" | "WARN" | "FATAL") {
            continue;
        }
        if !accepted.iter().any(|a| a.id == id && text.starts_with(a.finding)) {
            p.push(format!("testssl {sev} {id}: {text}"));
        }
    }
    let mut expect =
        |id: &str, ok: &dyn Fn(&str) -> bool, what: &str| match findings.iter().find(|f| f["id"] == id) {
            None => p.push(format!("testssl: no `{id}` finding (the check did not run)")),
            Some(f) => {
                let text = f["finding"].as_str().unwrap_or("");
                if !ok(text) {
                    p.push(format!("testssl {id}: {text} (expected {what})"));
                }
            }
        };
    let not_offered = |t: &str| t.starts_with("not offered");
    if checks.contains(&"-p") {
        for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
            expect(id, &not_offered, "not offered");
        }
        expect("TLS1_3", &|t| t.starts_with("offered"), "offered");
    }
    if checks.contains(&"-s") {
        for id in [
            "cipherlist_NULL",
            "cipherlist_aNULL",
            "cipherlist_EXPORT",
            "cipherlist_LOW",
            "cipherlist_3DES_IDEA",
            "cipherlist_AVERAGE",
        ] {
            expect(id, &not_offered, "not offered");
        }
        expect("cipherlist_STRONG", &|t| t.starts_with("offered"), "offered");
    }
    if checks.contains(&"-f") {
        let strong =
            |t: &str| !t.trim().is_empty() && t.split_whitespace().all(|g| STRONG_GROUPS.contains(&g));
        expect("PFS_ECDHE_curves", &strong, "only strong groups");
    }
    if checks.contains(&"-S") {
        expect("cert_signatureAlgorithm", &|t| t == "ECDSA with SHA256", "ECDSA with SHA256");
        expect("cert_keySize", &|t| t == "EC 256 bits", "EC 256 bits");
        expect("cert_chain_of_trust", &|t| t.starts_with("passed"), "a chain to the bundle");
    }
    if checks.contains(&"-U") {
        for id in ["secure_renego", "secure_client_renego", "heartbleed", "CCS", "ROBOT", "fallback_SCSV"] {
            let sev_ok = findings.iter().find(|f| f["id"] == id).is_some_and(|f| f["severity"] == "OK");
            if !sev_ok {
                p.push(format!("testssl {id}: {} (expected an OK rating)", testssl_finding(findings, id)));
            }
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// openssl s_client probes
// ---------------------------------------------------------------------------------------------

/// What `openssl s_client` saw of one endpoint: a full TLS 1.3 handshake (presenting the
/// client certificate) that saved its session, the session file's text, a resumption of it
/// that offered 0-RTT early data, and a TLS 1.2-only attempt.
pub struct Handshakes {
    pub full: Output,
    pub session: String,
    pub resumed: Output,
    pub tls12: Output,
}

/// Runs the three `s_client` connections of [`Handshakes`]; `request` is what the first two
/// send after the handshake (the server must answer and close, or go idle and close, so that
/// `-ign_eof` ends). Files go under `dir`.
pub fn openssl_handshakes(
    addr: SocketAddr,
    client: Option<&ClientCert>,
    ca: &Path,
    request: &[u8],
    dir: &Path,
) -> Handshakes {
    std::fs::create_dir_all(dir).expect("creating the probe directory");
    let req = dir.join("request");
    std::fs::write(&req, request).expect("writing the probe request");
    let sess = dir.join("session.pem");
    let _ = std::fs::remove_file(&sess);
    let connect = addr.to_string();
    let mut base: Vec<String> =
        vec!["s_client".into(), "-connect".into(), connect, "-CAfile".into(), path(ca)];
    if let Some(cc) = client {
        base.extend(["-cert".into(), path(&cc.chain), "-cert_chain".into(), path(&cc.chain)]);
        base.extend(["-key".into(), path(&cc.key)]);
    }
    let full = s_client(&base, &["-tls1_3", "-showcerts", "-ign_eof", "-sess_out", &path(&sess)], Some(&req));
    let session = Cmd::new("openssl").args(["sess_id", "-noout", "-text", "-in"]).arg(&sess).run().stdout;
    let resumed = s_client(&base, &["-tls1_3", "-sess_in", &path(&sess), "-early_data", &path(&req)], None);
    let tls12 = s_client(&base, &["-tls1_2"], None);
    Handshakes { full, session, resumed, tls12 }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `openssl BASE... EXTRA...` with stdin from `stdin` (or closed), ended after 8 s (a server
/// that neither answers nor closes, like the control's s_server, holds an `-ign_eof` client
/// until then). stdout is line-buffered so that a client ended that way loses nothing.
fn s_client(base: &[String], extra: &[&str], stdin: Option<&Path>) -> Output {
    let mut c = Command::new("timeout");
    c.args(["8", "stdbuf", "-oL", "openssl"]).args(base).args(extra);
    let cmdline = format!("openssl {} {}", base.join(" "), extra.join(" "));
    match stdin {
        Some(f) => c.stdin(File::open(f).expect("opening the probe request")),
        None => c.stdin(Stdio::null()),
    };
    let o = c.output().unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    Output {
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        cmdline,
    }
}

/// The value after `key` on the first line of `text` that starts with it.
fn line_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Signature algorithms that must never be asked for or used (openssl's spelling).
fn weak_sigalg(alg: &str) -> bool {
    let a = alg.to_ascii_uppercase();
    a.contains("SHA1") || a.contains("SHA224") || a.contains("MD5") || a.starts_with("DSA") || a == "0X0201"
}

/// What in the `s_client` transcripts breaks the profile: no full TLS 1.3 handshake, a weak
/// signature algorithm requested (CertificateRequest) or used by the server, a weak group, a
/// session that allows early data, early data accepted, a TLS 1.2 handshake.
pub fn openssl_problems(h: &Handshakes) -> Vec<String> {
    let mut p = Vec::new();
    let out = &h.full.stdout;
    if !out.lines().any(|l| l.starts_with("New, TLSv1.3")) {
        p.push(format!("openssl: no full TLS 1.3 handshake:\n{}", h.full));
        return p;
    }
    if let Some(list) = line_value(out, "Requested Signature Algorithms:") {
        for alg in list.split(':').filter(|a| weak_sigalg(a)) {
            p.push(format!("openssl: the server asks for client signatures with {alg}"));
        }
    }
    for key in ["Peer signing digest:", "Peer signature type:"] {
        match line_value(out, key) {
            Some(v) if weak_sigalg(v) || v.eq_ignore_ascii_case("RSA") => {
                p.push(format!("openssl: {key} {v}"));
            }
            Some(_) => {}
            None => p.push(format!("openssl: no `{key}` line")),
        }
    }
    match line_value(out, "Server Temp Key:") {
        Some(v) if STRONG_GROUPS.iter().any(|g| v.starts_with(&format!("{g},"))) => {}
        other => p.push(format!("openssl: Server Temp Key {other:?}")),
    }
    for l in h.session.lines().filter_map(|l| l.trim().strip_prefix("Max Early Data:")) {
        if l.trim() != "0" {
            p.push(format!("openssl: the session ticket allows {} bytes of early data", l.trim()));
        }
    }
    if h.resumed.stdout.lines().any(|l| l.starts_with("Early data was accepted")) {
        p.push("openssl: 0-RTT early data accepted".into());
    }
    if h.tls12.stdout.lines().any(|l| l.starts_with("New, TLSv1.2")) {
        p.push("openssl: a TLS 1.2 handshake succeeded".into());
    }
    p
}

/// The certificates the server sent (`s_client -showcerts`), leaf first, as PEM blocks.
pub fn served_chain(h: &Handshakes) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for l in h.full.stdout.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE-----") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(l);
            c.push('\n');
        }
        if l.starts_with("-----END CERTIFICATE-----") {
            blocks.extend(cur.take());
        }
    }
    blocks
}

// ---------------------------------------------------------------------------------------------
// pkilint
// ---------------------------------------------------------------------------------------------

/// One pkilint finding.
#[derive(Debug, Clone)]
pub struct LintFinding {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub node: String,
}

impl std::fmt::Display for LintFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} at {}: {}", self.severity, self.code, self.node, self.message)
    }
}

/// `lint_pkix_cert lint -s INFO -f JSON FILE` (RFC 5280), or with `issuer`,
/// `lint_pkix_signer_signee_cert_chain lint ISSUER FILE` (the issuer/subject pair rules).
/// `file` holds one certificate.
pub fn pkilint(file: &Path, issuer: Option<&Path>) -> Vec<LintFinding> {
    let c = match issuer {
        None => Cmd::new("lint_pkix_cert").args(["lint", "-s", "INFO", "-f", "JSON"]).arg(file),
        Some(i) => Cmd::new("lint_pkix_signer_signee_cert_chain")
            .args(["lint", "-s", "INFO", "-f", "JSON"])
            .arg(i)
            .arg(file),
    };
    let o = c.run();
    let v: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("pkilint printed no JSON ({e}):\n{o}"));
    let mut out = Vec::new();
    for r in v["results"].as_array().into_iter().flatten() {
        for d in r["finding_descriptions"].as_array().into_iter().flatten() {
            out.push(LintFinding {
                severity: d["severity"].as_str().unwrap_or("?").to_owned(),
                code: d["code"].as_str().unwrap_or("?").to_owned(),
                message: d["message"].as_str().unwrap_or("").to_owned(),
                node: r["node_path"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    out
}

/// The pkilint findings that are problems: every ERROR and FATAL, every WARNING and NOTICE,
/// except the two the mesh accepts:
/// - `pkix.invalid_uri_syntax` on exactly `uri` (the certificate's SPIFFE ID): pkilint checks
///   URIs with the `validators` package's URL check, which knows only a fixed list of schemes
///   (http, https, ftp, ...), so every `spiffe://` URI fails it although it is a valid
///   RFC 3986 URI (SPIFFE IDs are checked by the mesh's own parser and `svid_check.py`);
/// - `pkix.unknown_subject_key_identifier_calculation_method` (NOTICE): RFC 5280 4.2.1.2
///   allows any method that yields unique identifiers; pkilint only recognises RFC 7093's.
pub fn pkilint_problems(findings: &[LintFinding], uri: &str) -> Vec<String> {
    let spiffe_msg = format!("Invalid URI syntax: \"{uri}\"");
    findings
        .iter()
        .filter(|f| matches!(f.severity.as_str(), "FATAL" | "ERROR" | "WARNING" | "NOTICE"))
        .filter(|f| !(f.code == "pkix.invalid_uri_syntax" && f.message == spiffe_msg))
        .filter(|f| f.code != "pkix.unknown_subject_key_identifier_calculation_method")
        .map(ToString::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The negative control
// ---------------------------------------------------------------------------------------------

/// An `openssl s_server` that every check must fail: a throwaway RSA certificate, TLS 1.0 to
/// 1.3, every cipher OpenSSL has (`@SECLEVEL=0`: anonymous, CBC, 3DES), 0-RTT early data, and
/// SHA-1 among the signatures it asks clients for. Killed on drop.
pub struct WeakServer {
    pub addr: SocketAddr,
    /// The throwaway certificate (also the CA file for probes).
    pub cert: PathBuf,
    child: Child,
    /// Held open: s_server treats EOF on stdin as the end of its connection.
    _stdin: ChildStdin,
    _dir: tempfile::TempDir,
}

impl WeakServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (cert, key) = (dir.path().join("weak.pem"), dir.path().join("weak.key"));
        Cmd::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=weak.invalid",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .run()
            .assert_ok();
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(["-min_protocol", "TLSv1", "-cipher", "ALL:@SECLEVEL=0", "-early_data"])
            .args(["-verify", "1", "-client_sigalgs", "RSA+SHA1:ECDSA+SHA1:RSA+SHA256:ECDSA+SHA256"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server can be started");
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the `ACCEPT 127.0.0.1:PORT` line, then drains stdout so s_server never blocks.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(a) =
                        line.strip_prefix("ACCEPT ").and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    {
                        let _ = tx.send(a);
                        sent = true;
                    }
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).expect("s_server printed its ACCEPT address");
        Self { addr, cert, child, _stdin: stdin, _dir: dir }
    }
}

impl Drop for WeakServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
