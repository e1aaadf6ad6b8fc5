//! Test support for the CA server (`mesh-ca serve`) and enrollment tests:
//!
//! - [`CaServer`]: a running server whose JSON events are collected as they are printed, which
//!   can be killed (`kill -9`) and started again on the same directory and address;
//! - [`LineChild`]: any child process whose stdout lines can be waited for;
//! - the store as `mesh-ca list --json` shows it, join tokens and revocations made with the
//!   real CLI;
//! - [`Api`], [`Csr`], [`outside_leaf`]: an API client, CSRs and certificates the CA did not
//!   make, all from `tests/py/ca_client.py` (`ssl`, `http.client`, `cryptography`; no code
//!   shared with mesh-ca);
//! - [`EnrollMesh`], [`Traffic`]: sidecars in enrollment mode (run by
//!   [`crate::proxy::Sidecar`]) and continuous traffic through them.
//!
//! Waiting is for a line, an event or an exit, with a deadline. The only polling (every
//! 100 ms, [`poll`]) is for waits longer than a sidecar's own deadline, such as a rotation.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::proxy::{payload, Probe, Sidecar};
use crate::{binary, py_script, Cmd, Output, TestCa};

/// How long any single expected thing (an event, a line, an exit) may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
    closed: bool,
}

type SharedLines = Arc<(Mutex<Lines>, Condvar)>;

fn lock(l: &SharedLines) -> MutexGuard<'_, Lines> {
    l.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// A child process whose stdout and stderr lines are collected as they are printed. Killed
/// (SIGKILL) on drop.
pub struct LineChild {
    pub name: String,
    child: Option<Child>,
    lines: SharedLines,
}

impl LineChild {
    /// Starts `program args...` with stdin closed and the mesh-ca passphrase variable removed.
    pub fn spawn(name: &str, program: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .env_remove(crate::PASSPHRASE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let lines: SharedLines = Arc::default();
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lock(&l).stdout.push(line);
                l.1.notify_all();
            }
            lock(&l).closed = true;
            l.1.notify_all();
        });
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                lock(&l).stderr.push(line);
                l.1.notify_all();
            }
        });
        Self { name: name.to_owned(), child: Some(child), lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn stdout(&self) -> Vec<String> {
        lock(&self.lines).stdout.clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        lock(&self.lines).stderr.clone()
    }

    /// Whether stdout has been closed (the process exited, or closed it).
    pub fn closed(&self) -> bool {
        lock(&self.lines).closed
    }

    /// Everything printed, for failure messages.
    pub fn transcript(&self) -> String {
        let g = lock(&self.lines);
        format!(
            "--- {} (pid {}) stdout ---\n{}\n--- stderr ---\n{}\n",
            self.name,
            self.pid(),
            g.stdout.join("\n"),
            g.stderr.join("\n")
        )
    }

    /// Waits up to `limit` until `f` finds what it looks for in the stdout lines so far;
    /// None when the limit passes or stdout closes without it.
    pub fn wait_lines_for<T>(&self, limit: Duration, mut f: impl FnMut(&[String]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        let mut g = lock(&self.lines);
        loop {
            if let Some(found) = f(&g.stdout) {
                return Some(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || g.closed {
                return None;
            }
            g = self.lines.1.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Like [`LineChild::wait_lines_for`] with [`DEADLINE`], panicking with the transcript.
    #[track_caller]
    pub fn wait_lines<T>(&self, what: &str, f: impl FnMut(&[String]) -> Option<T>) -> T {
        match self.wait_lines_for(DEADLINE, f) {
            Some(v) => v,
            None => panic!("waiting for {what} on {}: timed out or exited\n{}", self.name, self.transcript()),
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = c.kill();
        c.wait().ok()
    }

    /// Sends a signal by name (`TERM`, `HUP`, `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, sig: &str) {
        Cmd::new("kill").args(["-s", sig, &self.pid().to_string()]).run().assert_ok();
    }

    /// Waits up to `limit` for the process to exit (stdout closed, then reaped).
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        {
            let mut g = lock(&self.lines);
            while !g.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    drop(g);
                    panic!("{} did not exit within {limit:?}\n{}", self.name, self.transcript());
                }
                g = self.lines.1.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        let mut c = self.child.take().expect("the process was started and not yet reaped");
        c.wait().expect("waiting for a child we started")
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The stdout lines that parse as JSON objects.
fn json_lines(lines: &[String]) -> Vec<Value> {
    lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(Value::is_object).collect()
}

/// A running `mesh-ca serve --dir DIR --listen 127.0.0.1:0`, with the trust bundle written
/// beside the CA (`<tmp>/bundle.pem`, from `mesh-ca bundle`) for clients to verify it against.
pub struct CaServer {
    pub proc: LineChild,
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub bundle: PathBuf,
}

impl CaServer {
    /// Starts the server on the CA of `ca` (unencrypted, or with its passphrase file) with
    /// `extra` flags and waits for `ca.started`.
    pub fn start(ca: &TestCa, extra: &[&str]) -> Self {
        Self::start_on(ca, "127.0.0.1:0", extra)
    }

    /// Like [`CaServer::start`] on a given listen address (to come back on the same port).
    pub fn start_on(ca: &TestCa, listen: &str, extra: &[&str]) -> Self {
        let dir = ca.dir.display().to_string();
        let mut args = vec!["serve", "--dir", &dir, "--listen", listen];
        let pass = ca.pass_file.as_ref().map(|p| p.display().to_string());
        if let Some(p) = &pass {
            args.extend(["--passphrase-file", p]);
        }
        args.extend_from_slice(extra);
        let proc = LineChild::spawn("mesh-ca serve", &binary("mesh-ca"), &args);
        let started =
            proc.wait_lines("ca.started", |l| json_lines(l).into_iter().find(|e| e["event"] == "ca.started"));
        let addr: SocketAddr = started["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("ca.started names no listen address: {started}"));
        let bundle = ca.path("bundle.pem");
        let o = ca.cmd("bundle").run();
        o.assert_ok();
        std::fs::write(&bundle, &o.stdout).expect("writing bundle.pem");
        Self { proc, addr, url: format!("https://{addr}"), bundle }
    }

    /// The events printed so far.
    pub fn events(&self) -> Vec<Value> {
        json_lines(&self.proc.stdout())
    }

    /// stdout lines that are not JSON objects (the contract allows none).
    pub fn not_json(&self) -> Vec<String> {
        self.proc
            .stdout()
            .into_iter()
            .filter(|l| !serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object()))
            .collect()
    }

    /// The events named `name` so far.
    pub fn named(&self, name: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == name).collect()
    }

    /// Waits for an event matching `pred`.
    #[track_caller]
    /// The metrics listener's address, as `ca.started` names it (the server was started with
    /// `--metrics-listen`).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let started = self.wait_event("ca.started", |e| e["event"] == "ca.started");
        started["metrics"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("ca.started names no metrics address: {started}"))
    }

    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.proc.wait_lines(what, |l| json_lines(l).into_iter().find(|e| pred(e)))
    }

    /// An API client of this server.
    pub fn api(&self) -> Api {
        Api { url: self.url.clone(), bundle: self.bundle.clone() }
    }

    pub fn transcript(&self) -> String {
        self.proc.transcript()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }
}

/// `mesh-ca token create`; returns the token (panics unless it worked and printed only it).
pub fn token(ca: &TestCa, zone: &str, workload: &str, ttl: &str, uses: u32) -> String {
    let o = Cmd::mesh_ca()
        .args(["token", "create", "--dir"])
        .arg(&ca.dir)
        .args(["--zone", zone, "--workload", workload, "--ttl", ttl, "--uses", &uses.to_string()])
        .run();
    o.assert_ok();
    let t = o.stdout.trim().to_owned();
    assert!(
        t.starts_with("ztm1_") && !t.contains(char::is_whitespace) && o.stdout.lines().count() == 1,
        "token create must print only the token:\n{o}"
    );
    t
}

/// `mesh-ca revoke --dir DIR ARGS...` (e.g. `--serial HEX`, `--zone Z --workload W`).
pub fn revoke(ca: &TestCa, args: &[&str]) -> Output {
    Cmd::mesh_ca().args(["revoke", "--dir"]).arg(&ca.dir).args(args).run()
}

/// Every certificate in the store (`mesh-ca list --json`).
pub fn store_certs(ca: &TestCa) -> Vec<Value> {
    let o = ca.cmd("list").arg("--json").run();
    o.assert_ok();
    let v: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("list --json: {e}\n{o}"));
    v["certificates"].as_array().cloned().unwrap_or_else(|| panic!("list --json has no certificates:\n{o}"))
}

/// The leaves in the store, without the CA server's own (`.../ns/mesh-system/sa/ca`).
pub fn workload_leaves(ca: &TestCa) -> Vec<Value> {
    store_certs(ca)
        .into_iter()
        .filter(|c| {
            c["kind"] == "leaf" && !c["spiffe_id"].as_str().unwrap_or("").ends_with("/ns/mesh-system/sa/ca")
        })
        .collect()
}

/// Lowercase hex without leading zeros, so serials printed by different tools compare equal.
pub fn norm(hex: &str) -> String {
    hex.trim().trim_start_matches('0').to_ascii_lowercase()
}

/// Runs `python3 tests/py/ca_client.py ARGS...` and parses the JSON it prints.
#[track_caller]
pub fn ca_client(args: &[&str]) -> Value {
    let o = Cmd::new("python3").arg(py_script("ca_client.py")).args(args).run();
    assert!(o.success(), "ca_client.py failed:\n{o}");
    serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("ca_client.py printed no JSON ({e}):\n{o}"))
}

/// Starts `python3 tests/py/ca_client.py ARGS...` in the background (for `burst`, and for
/// requests that announce themselves before their answer, like a long-poll).
pub fn ca_client_spawn(name: &str, args: &[&str]) -> LineChild {
    let script = py_script("ca_client.py").display().to_string();
    let mut all = vec![script.as_str()];
    all.extend_from_slice(args);
    LineChild::spawn(name, Path::new("python3"), &all)
}

/// One answer of the API: an HTTP status and body, or the connection/TLS error instead.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: Option<u16>,
    /// The body as JSON (Null when it was not JSON).
    pub json: Value,
    pub text: String,
    /// Set when there was no HTTP answer: a TLS alert, a reset, EOF.
    pub error: Option<String>,
    /// Statuses of every request when one was repeated.
    pub statuses: Vec<u16>,
    /// The `Allow` header, if the answer had one (a 405 names the methods the path takes).
    pub allow: Option<String>,
}

impl Reply {
    fn from_json(v: &Value) -> Self {
        Self {
            status: v["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
            json: v["json"].clone(),
            text: v["text"].as_str().unwrap_or("").to_owned(),
            error: v["error"].as_str().map(str::to_owned),
            allow: v["allow"].as_str().map(str::to_owned),
            statuses: v["statuses"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_u64().and_then(|s| u16::try_from(s).ok())).collect())
                .unwrap_or_default(),
        }
    }

    /// The `error` code of a JSON error body ("" if none).
    pub fn code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// Whether the request was refused inside the TLS handshake with an alert.
    pub fn tls_alert(&self) -> bool {
        self.status.is_none()
            && self.error.as_deref().is_some_and(|e| e.to_ascii_lowercase().contains("alert"))
    }

    /// Panics unless this is a 4xx with JSON `{"error": code, "reason": <non-empty>}`.
    #[track_caller]
    pub fn assert_refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, Some(status), "expected {status} {code}, got {self:?}");
        assert_eq!(self.code(), code, "expected error code {code}: {self:?}");
        let reason = self.json["reason"].as_str().unwrap_or("");
        assert!(!reason.trim().is_empty(), "a refusal must say why in `reason`: {self:?}");
    }

    /// Panics unless this is a 200 with an issued certificate; returns the body.
    #[track_caller]
    pub fn assert_issued(&self) -> &Value {
        assert_eq!(self.status, Some(200), "expected a certificate: {self:?}");
        for k in ["spiffe_id", "serial", "cert_chain", "bundle"] {
            assert!(self.json[k].is_string(), "the body lacks {k}: {self:?}");
        }
        assert!(self.json["not_after"].is_i64(), "the body lacks not_after: {self:?}");
        &self.json
    }
}

/// A client of one CA server, verifying it against the trust bundle.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    pub bundle: PathBuf,
}

impl Api {
    fn base(&self) -> Vec<String> {
        vec![
            "request".into(),
            "--url".into(),
            self.url.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
        ]
    }

    /// One request; `extra` are more ca_client.py `request` flags (`--json`, `--body-file`,
    /// `--cert`/`--key`, `--repeat`, `--body-bytes`).
    pub fn request(&self, method: &str, path: &str, extra: &[&str]) -> Reply {
        let mut args = self.base();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(method.into());
        args.push(path.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Reply::from_json(&ca_client(&refs))
    }

    /// POST PATH with a JSON body, optionally over mutual TLS with (cert, key).
    pub fn post(&self, path: &str, body: &Value, client: Option<(&Path, &Path)>) -> Reply {
        let text = body.to_string();
        let mut extra = vec!["--json".to_owned(), text];
        if let Some((c, k)) = client {
            extra.extend(["--cert".into(), c.display().to_string(), "--key".into(), k.display().to_string()]);
        }
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.request("POST", path, &refs)
    }

    /// `POST /v1/enroll {"token", "csr"}`.
    pub fn enroll(&self, token: &str, csr: &Csr) -> Reply {
        self.post("/v1/enroll", &json!({"token": token, "csr": csr.pem}), None)
    }

    /// `POST /v1/renew {"csr"}` over mutual TLS with `cert` (the whole chain file) and `key`.
    pub fn renew(&self, cert: &Path, key: &Path, csr: &Csr) -> Reply {
        self.post("/v1/renew", &json!({"csr": csr.pem}), Some((cert, key)))
    }

    /// The ca_client.py arguments that start a background request (see [`ca_client_spawn`]).
    pub fn spawn_args(&self, method: &str, path: &str) -> Vec<String> {
        let mut a = self.base();
        a.extend(["--announce".into(), method.into(), path.into()]);
        a
    }
}

/// A key and CSR made by `ca_client.py csr` (Python `cryptography`).
#[derive(Debug, Clone)]
pub struct Csr {
    pub key: PathBuf,
    pub csr: PathBuf,
    /// The CSR, PEM.
    pub pem: String,
    /// The public key of `key`, PEM (SubjectPublicKeyInfo).
    pub public_key: String,
}

impl Csr {
    /// A CSR in `<dir>/<name>.{key,csr}.pem`; `flags` are `ca_client.py csr` flags
    /// (`--key-type`, `--uri`, `--dns`, `--cn`, `--ca`, `--long-validity`, `--tamper`).
    pub fn make(dir: &Path, name: &str, flags: &[&str]) -> Self {
        let key = dir.join(format!("{name}.key.pem"));
        let csr = dir.join(format!("{name}.csr.pem"));
        let (k, c) = (key.display().to_string(), csr.display().to_string());
        let mut args = vec!["csr", "--key-out", &k, "--csr-out", &c];
        args.extend_from_slice(flags);
        let out = ca_client(&args);
        let pem = std::fs::read_to_string(&csr).unwrap_or_else(|e| panic!("{}: {e}", csr.display()));
        let public_key = out["public_key"].as_str().unwrap_or_default().to_owned();
        Self { key, csr, pem, public_key }
    }

    /// A plain P-256 CSR.
    pub fn p256(dir: &Path, name: &str) -> Self {
        Self::make(dir, name, &[])
    }
}

/// A certificate the API issued, written to `<dir>/cert.pem` (chain), `leaf.pem`,
/// `chain-rest.pem`, `key.pem` and `bundle.pem`, for validators and mTLS clients.
#[derive(Debug, Clone)]
pub struct Issued {
    pub dir: PathBuf,
    pub spiffe_id: String,
    pub serial: String,
    pub not_after: i64,
}

impl Issued {
    /// Writes what `body` (a 200 of enroll or renew) holds, with the CSR's key.
    pub fn save(body: &Value, csr: &Csr, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("creating a certificate directory");
        let chain = body["cert_chain"].as_str().unwrap_or_default();
        std::fs::write(dir.join("cert.pem"), chain).expect("writing cert.pem");
        std::fs::write(dir.join("bundle.pem"), body["bundle"].as_str().unwrap_or_default())
            .expect("writing bundle.pem");
        std::fs::copy(&csr.key, dir.join("key.pem")).expect("copying key.pem");
        let certs = crate::read_pem_certs(&dir.join("cert.pem"));
        assert!(!certs.is_empty(), "cert_chain holds no certificate: {body}");
        crate::write_pem_certs(&dir.join("leaf.pem"), &certs[..1]);
        crate::write_pem_certs(&dir.join("chain-rest.pem"), &certs[1..]);
        Self {
            dir: dir.to_owned(),
            spiffe_id: body["spiffe_id"].as_str().unwrap_or_default().to_owned(),
            serial: norm(body["serial"].as_str().unwrap_or_default()),
            not_after: body["not_after"].as_i64().unwrap_or_default(),
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub fn leaf(&self) -> PathBuf {
        self.dir.join("leaf.pem")
    }
}

/// A leaf made by `ca_client.py leaf` outside the CA: `--expired` (signed by this CA's
/// intermediate, validity over) or `--foreign` (another CA of the same trust domain name).
/// Returns the directory holding cert.pem and key.pem, and the serial.
pub fn outside_leaf(ca: &TestCa, zone: &str, workload: &str, name: &str, kind: &str) -> (PathBuf, String) {
    let out = ca.path(name);
    let (d, o) = (ca.dir.display().to_string(), out.display().to_string());
    let v = ca_client(&["leaf", "--ca-dir", &d, "--zone", zone, "--workload", workload, "--out", &o, kind]);
    (out, norm(v["serial"].as_str().unwrap_or_default()))
}

/// Polls `f` every 100 ms until it returns Some or `limit` passes (for waits longer than a
/// [`crate::proxy::Sidecar`]'s own deadline, and for the store).
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Sidecars in enrollment mode
// ---------------------------------------------------------------------------------------------

/// A CA server and sidecars that enroll with it: `[identity] ca_url, ca_bundle, token_file`.
/// The CA server can be killed and brought back on the same address.
pub struct EnrollMesh {
    pub ca: TestCa,
    pub server: Option<CaServer>,
    pub addr: SocketAddr,
    /// Extra `mesh-ca serve` flags (kept for restarts).
    serve_flags: Vec<String>,
    pub policy: PathBuf,
}

impl EnrollMesh {
    /// A CA, its server (`serve_flags`, e.g. `--cert-ttl 1m`) and `policy.toml`.
    pub fn start(serve_flags: &[&str], policy: &str) -> Self {
        let ca = TestCa::init_unencrypted();
        let server = CaServer::start(&ca, serve_flags);
        let policy_path = ca.path("policy.toml");
        std::fs::write(&policy_path, policy).expect("writing policy.toml");
        Self {
            addr: server.addr,
            ca,
            server: Some(server),
            serve_flags: serve_flags.iter().map(|s| (*s).to_owned()).collect(),
            policy: policy_path,
        }
    }

    pub fn server(&self) -> &CaServer {
        self.server.as_ref().expect("the CA server is running")
    }

    /// `kill -9` of the CA server.
    pub fn kill_ca(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
    }

    /// Starts the CA server again on the same address (sidecars have its URL in their config).
    pub fn restart_ca(&mut self) {
        assert!(self.server.is_none(), "the CA server is still running");
        let flags: Vec<&str> = self.serve_flags.iter().map(String::as_str).collect();
        let s = CaServer::start_on(&self.ca, &self.addr.to_string(), &flags);
        assert_eq!(s.addr, self.addr, "the CA came back on another address");
        self.server = Some(s);
    }

    pub fn id(&self, zone: &str, workload: &str) -> String {
        format!("spiffe://{}/ns/{zone}/sa/{workload}", self.ca.trust_domain)
    }

    /// Writes `<tmp>/sc-<name>/sidecar.toml` in enrollment mode with a fresh token of `uses`
    /// uses for `zone/workload` in `<tmp>/sc-<name>/token`; returns the config path.
    pub fn config(&self, name: &str, zone: &str, workload: &str, uses: u32, spec: &SidecarShape) -> PathBuf {
        let dir = self.ca.path(&format!("sc-{name}"));
        std::fs::create_dir_all(&dir).expect("creating a sidecar directory");
        let t = token(&self.ca, zone, workload, "15m", uses);
        std::fs::write(dir.join("token"), format!("{t}\n")).expect("writing the token file");
        let mut text = format!(
            "policy = \"../policy.toml\"\n\n[identity]\nca_url = \"https://{}\"\nca_bundle = \"../bundle.pem\"\ntoken_file = \"token\"\n",
            self.addr
        );
        if let Some(app) = spec.inbound {
            text.push_str(&format!("\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"{app}\"\n"));
        }
        for (connect, server) in &spec.outbound {
            text.push_str(&format!(
                "\n[[outbound]]\nlisten = \"127.0.0.1:0\"\nconnect = \"{connect}\"\nserver = \"{server}\"\n"
            ));
        }
        if spec.admin {
            text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        }
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, text).expect("writing sidecar.toml");
        path
    }

    /// Writes the config and starts the sidecar (waits for `proxy.started`).
    pub fn sidecar(&self, name: &str, zone: &str, workload: &str, uses: u32, spec: &SidecarShape) -> Sidecar {
        let config = self.config(name, zone, workload, uses, spec);
        Sidecar::start(name, &config)
    }
}

/// The listeners of an enrollment-mode sidecar.
#[derive(Default, Clone)]
pub struct SidecarShape {
    pub inbound: Option<SocketAddr>,
    pub outbound: Vec<(SocketAddr, String)>,
    pub admin: bool,
}

/// The `serial` in a `cert.enrolled` / `cert.renewed` event's detail ("serial X valid until Y").
pub fn event_serial(e: &Value) -> String {
    let d = e["detail"].as_str().unwrap_or("");
    norm(d.split_whitespace().skip_while(|w| *w != "serial").nth(1).unwrap_or(""))
}

/// The admin address from a sidecar's `proxy.started` event (`admin=ADDR` in its detail).
pub fn admin_addr(sc: &Sidecar) -> SocketAddr {
    let started = sc.wait_for("proxy.started", |e| e["event"] == "proxy.started");
    let detail = started["detail"].as_str().unwrap_or("");
    detail
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin=").and_then(|a| a.parse().ok()))
        .unwrap_or_else(|| panic!("proxy.started names no admin address: {started}"))
}

/// `GET PATH` on an admin listener; returns the status code (None when it did not answer).
pub fn admin_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

/// The serial of the certificate a sidecar's inbound presents to a new handshake, read by a
/// Python `ssl` client (which has no certificate: the sidecar refuses it afterwards).
pub fn served_serial(inbound: SocketAddr, bundle: &Path) -> String {
    let v = Probe::to(inbound).verify(bundle).run();
    norm(v["peer_serial"].as_str().unwrap_or_else(|| panic!("the probe saw no server certificate: {v}")))
}

/// Waits up to `limit` for `n` events matching `pred` on a sidecar (beyond its own deadline).
pub fn wait_events(
    sc: &Sidecar,
    limit: Duration,
    n: usize,
    pred: impl Fn(&Value) -> bool,
) -> Option<Vec<Value>> {
    poll(limit, || {
        let found: Vec<Value> = sc.events().into_iter().filter(|e| pred(e)).collect();
        (found.len() >= n).then_some(found)
    })
}

// ---------------------------------------------------------------------------------------------
// Continuous traffic through a sidecar
// ---------------------------------------------------------------------------------------------

/// What [`Traffic`] saw.
#[derive(Debug, Clone, Default)]
pub struct TrafficStats {
    /// Short connections whose echo came back intact.
    pub ok: u64,
    /// Short connections that failed: (seconds since the start, what went wrong).
    pub failed: Vec<(f64, String)>,
    /// Round trips on the long-lived connection.
    pub long_ok: u64,
    /// Why the long-lived connection stopped, if it did before [`Traffic::stop`].
    pub long_failed: Option<(f64, String)>,
}

/// Continuous traffic at an outbound port: a bounded loop of short connections (connect, send,
/// half-close, read the echo) and, optionally, one long-lived connection opened at the start
/// that echoes a message every 200 ms.
pub struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<Mutex<TrafficStats>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Starts both loops; `pace` is the pause between short connections. The long-lived
    /// connection is established (one round trip) before this returns.
    pub fn start(addr: SocketAddr, pace: Duration, long_lived: bool) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let stats: Arc<Mutex<TrafficStats>> = Arc::default();
        let t0 = Instant::now();
        let mut handles = Vec::new();
        if long_lived {
            let mut conn = LongLived::open(addr).unwrap_or_else(|e| panic!("the long-lived connection: {e}"));
            conn.roundtrip(0).unwrap_or_else(|e| panic!("the long-lived connection's first echo: {e}"));
            let (st, s) = (stop.clone(), stats.clone());
            handles.push(std::thread::spawn(move || {
                let mut i = 1u64;
                while !st.load(Ordering::SeqCst) {
                    match conn.roundtrip(i) {
                        Ok(()) => s.lock().unwrap_or_else(|p| p.into_inner()).long_ok += 1,
                        Err(e) => {
                            s.lock().unwrap_or_else(|p| p.into_inner()).long_failed =
                                Some((t0.elapsed().as_secs_f64(), e));
                            return;
                        }
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }));
        }
        let (st, s) = (stop.clone(), stats.clone());
        handles.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !st.load(Ordering::SeqCst) {
                let r = short_exchange(addr, i);
                {
                    let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(()) => g.ok += 1,
                        Err(e) => g.failed.push((t0.elapsed().as_secs_f64(), e)),
                    }
                }
                i += 1;
                std::thread::sleep(pace);
            }
        }));
        Self { stop, stats, handles }
    }

    pub fn snapshot(&self) -> TrafficStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops both loops (the long-lived connection makes one more round trip first).
    pub fn stop(self) -> TrafficStats {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One short request: a payload out, the same payload back, then EOF.
fn short_exchange(addr: SocketAddr, i: usize) -> Result<(), String> {
    use std::io::{Read, Write};
    let data = payload(512 + i % 1024, (i % 251) as u8);
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    s.shutdown(std::net::Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).map_err(|e| format!("read after {} bytes: {e}", back.len()))?;
    if back != data {
        return Err(format!("echo differs: sent {} bytes, got {}", data.len(), back.len()));
    }
    Ok(())
}

/// A plaintext connection to an outbound port that stays open.
pub struct LongLived {
    pub stream: std::net::TcpStream,
}

impl LongLived {
    pub fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Self { stream })
    }

    /// Sends message `i` and reads its echo.
    pub fn roundtrip(&mut self, i: u64) -> Result<(), String> {
        use std::io::{Read, Write};
        let msg = format!("long-lived message {i:08}\n").into_bytes();
        self.stream.write_all(&msg).map_err(|e| format!("write #{i}: {e}"))?;
        let mut back = vec![0u8; msg.len()];
        self.stream.read_exact(&mut back).map_err(|e| format!("read #{i}: {e}"))?;
        if back != msg {
            return Err(format!("echo #{i} differs"));
        }
        Ok(())
    }
}
