//! Test support for the `mesh-proxy` end-to-end tests: a [`Mesh`] (a throwaway CA made by the
//! real `mesh-ca`, identities it issues, policy files), real `mesh-proxy run` children whose
//! JSON events are collected as they are printed ([`Sidecar`]), a recording echo app
//! ([`App`]), plain TCP clients and a Python `ssl` peer ([`Probe`]) for what a well-behaved
//! sidecar would never send.
//!
//! Nothing here waits by sleeping: every wait is for an event line, a byte or a process exit,
//! with a deadline. Every address is `127.0.0.1`, every port is chosen by the kernel.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{binary, py_script, Cmd, Output, TestCa};

/// How long any single expected thing (an event, an echo, an exit) may take. Generous: two
/// busy cores run several sidecars and Python at once.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The events a sidecar writes exactly one of per connection.
pub const CONNECTION_EVENTS: [&str; 4] =
    ["connection", "policy.deny", "tls.handshake_failed", "upstream.connect_failed"];

/// An identity issued by `mesh-ca issue` (or written by the Python factory).
#[derive(Debug, Clone)]
pub struct Identity {
    /// `spiffe://example.org/ns/<zone>/sa/<workload>`.
    pub id: String,
    /// The directory holding cert.pem (leaf + chain), key.pem and bundle.pem.
    pub dir: PathBuf,
    /// The leaf's serial, lowercase hex without leading zeros.
    pub serial: String,
}

impl Identity {
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }
}

/// A hex serial without leading zeros, so serials printed by different tools compare equal.
pub fn norm_serial(hex: &str) -> String {
    hex.trim().trim_start_matches('0').to_lowercase()
}

/// A CA (unencrypted keys: the Python factory signs with its intermediate) in a temporary
/// directory, and everything the tests write beside it.
pub struct Mesh {
    pub ca: TestCa,
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new()
    }
}

impl Mesh {
    pub fn new() -> Self {
        Self { ca: TestCa::init_unencrypted() }
    }

    /// A path under the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.ca.path(name)
    }

    /// `mesh-ca issue` into `<tmp>/id-<zone>-<workload>`.
    pub fn identity(&self, zone: &str, workload: &str) -> Identity {
        let out = format!("id-{zone}-{workload}");
        let (dir, serial) = self.ca.issue_ok(zone, workload, &out, &[]);
        Identity { id: self.id(zone, workload), dir, serial: norm_serial(&serial) }
    }

    /// Re-issues `ident` into its own directory (as an operator rotating files would); returns
    /// the identity with the new serial.
    pub fn reissue(&self, ident: &Identity) -> Identity {
        let out = ident.dir.file_name().expect("identity dirs have a name").to_string_lossy().into_owned();
        let (zone, workload) = parse_mesh_id(&ident.id);
        let (dir, serial) = self.ca.issue_ok(zone, workload, &out, &[]);
        Identity { id: ident.id.clone(), dir, serial: norm_serial(&serial) }
    }

    pub fn id(&self, zone: &str, workload: &str) -> String {
        format!("spiffe://{}/ns/{zone}/sa/{workload}", self.ca.trust_domain)
    }

    /// Leaves for `zone/workload` with the named defects (see `certfactory.ca_leaf_variant`),
    /// signed by this CA's intermediate unless the defect is the issuer; each directory also
    /// gets this CA's bundle.pem.
    pub fn variants(&self, zone: &str, workload: &str, names: &[&str]) -> BTreeMap<String, Identity> {
        let root = self.path("variants");
        let o = py_tool(&["variants"], |c| c.arg(&self.ca.dir).args([zone, workload]).arg(&root).args(names));
        let serials: BTreeMap<String, String> = serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("variants printed no JSON ({e}):\n{o}"));
        let bundle = std::fs::read(self.ca.dir.join("root.pem")).expect("the CA has root.pem");
        serials
            .into_iter()
            .map(|(name, serial)| {
                let dir = root.join(&name);
                std::fs::write(dir.join("bundle.pem"), &bundle).expect("writing a variant's bundle.pem");
                let ident = Identity { id: self.id(zone, workload), dir, serial: norm_serial(&serial) };
                (name, ident)
            })
            .collect()
    }

    /// Writes `<tmp>/<name>` atomically (a temporary file renamed into place, as deployment
    /// tools do), so a sidecar polling it never reads half a file. Returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Writes a sidecar.toml into `<tmp>/sc-<name>/` with every path relative to that
    /// directory (the contract resolves them against the config file) and starts it.
    pub fn sidecar(&self, spec: SidecarSpec<'_>) -> Sidecar {
        let config = self.write_config(&spec);
        let workers = spec.workers.map(|n| n.to_string());
        let env: Vec<(&str, &str)> = workers.iter().map(|n| ("TOKIO_WORKER_THREADS", n.as_str())).collect();
        Sidecar::start_with_env(spec.name, &config, &env)
    }

    /// Only writes the sidecar.toml of `spec`; returns its path.
    pub fn write_config(&self, spec: &SidecarSpec<'_>) -> PathBuf {
        let dir = self.path(&format!("sc-{}", spec.name));
        std::fs::create_dir_all(&dir).expect("creating a sidecar directory");
        let rel = |p: &Path| match p.strip_prefix(self.ca.tmp.path()) {
            Ok(r) => format!("../{}", r.display()),
            Err(_) => p.display().to_string(),
        };
        let mut t = format!(
            "policy = \"{}\"\n\n[identity]\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n",
            rel(&spec.policy),
            rel(&spec.identity.cert()),
            rel(&spec.identity.key()),
            rel(&spec.identity.bundle()),
        );
        if let Some(app) = spec.inbound {
            t.push_str(&format!("\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"{app}\"\n"));
        }
        for (connect, server) in &spec.outbound {
            t.push_str(&format!(
                "\n[[outbound]]\nlisten = \"127.0.0.1:0\"\nconnect = \"{connect}\"\nserver = \"{server}\"\n"
            ));
        }
        if !spec.limits.is_empty() {
            t.push_str("\n[limits]\n");
            for (k, v) in &spec.limits {
                t.push_str(&format!("{k} = \"{v}\"\n"));
            }
        }
        if let Some(on) = spec.resumption {
            t.push_str(&format!("\n[tls]\nresumption = {on}\n"));
        }
        t.push_str(&spec.extra);
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, t).expect("writing sidecar.toml");
        path
    }
}

/// `zone`, `workload` of a mesh-shaped SPIFFE ID.
fn parse_mesh_id(id: &str) -> (&str, &str) {
    let parts: Vec<&str> = id.split('/').collect();
    match parts.as_slice() {
        [_, _, _, "ns", zone, "sa", workload] => (zone, workload),
        _ => panic!("{id} is not spiffe://<td>/ns/<zone>/sa/<workload>"),
    }
}

/// What to write into one sidecar.toml.
pub struct SidecarSpec<'a> {
    pub name: &'a str,
    pub identity: &'a Identity,
    pub policy: PathBuf,
    /// The local app's address, for an `[inbound]`.
    pub inbound: Option<SocketAddr>,
    /// `(connect, server)` per `[[outbound]]`.
    pub outbound: Vec<(SocketAddr, String)>,
    pub limits: Vec<(&'a str, &'a str)>,
    /// `[tls] resumption`, when written.
    pub resumption: Option<bool>,
    /// `TOKIO_WORKER_THREADS` for the process, when set (1: the current-thread runtime).
    pub workers: Option<usize>,
    /// More TOML tables (`[admin]`, `[events]`), appended as they are.
    pub extra: String,
}

impl<'a> SidecarSpec<'a> {
    pub fn new(name: &'a str, identity: &'a Identity, policy: &Path) -> Self {
        Self {
            name,
            identity,
            policy: policy.to_owned(),
            inbound: None,
            outbound: Vec::new(),
            limits: Vec::new(),
            resumption: None,
            workers: None,
            extra: String::new(),
        }
    }
    pub fn inbound(mut self, app: SocketAddr) -> Self {
        self.inbound = Some(app);
        self
    }
    pub fn outbound(mut self, connect: SocketAddr, server: &str) -> Self {
        self.outbound.push((connect, server.to_owned()));
        self
    }
    pub fn limit(mut self, key: &'a str, value: &'a str) -> Self {
        self.limits.push((key, value));
        self
    }
    pub fn resumption(mut self, on: bool) -> Self {
        self.resumption = Some(on);
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }
    /// Appends `toml` (whole tables) to the sidecar.toml.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(toml);
        self
    }
}

/// The sidecar pair most tests need: a server sidecar for `orders/api` in front of an echo
/// [`App`], and a client sidecar for `frontend/web` with one outbound to the server's inbound.
/// `Pair::with_policy(policy).start()`; [`PairSpec`]'s methods set what differs.
pub struct Pair {
    pub mesh: Mesh,
    pub api: Identity,
    pub web: Identity,
    pub app: App,
    pub server: Sidecar,
    pub client: Sidecar,
    /// The policy files the server and the client follow (the same file unless
    /// [`PairSpec::server_policy`] gave the server its own).
    pub server_policy: PathBuf,
    pub client_policy: PathBuf,
}

/// What to start a [`Pair`] with.
pub struct PairSpec {
    mesh: Option<Mesh>,
    policy: String,
    server_policy: Option<Option<String>>,
    server_limits: Vec<(String, String)>,
    client_limits: Vec<(String, String)>,
    client_outbound: Vec<(SocketAddr, String)>,
    client_to_server: Vec<String>,
    server_extra: String,
    client_extra: String,
    server_workers: Option<usize>,
}

impl Pair {
    /// Both sidecars follow one `policy.toml` holding `policy`.
    pub fn with_policy(policy: &str) -> PairSpec {
        PairSpec {
            mesh: None,
            policy: policy.to_owned(),
            server_policy: None,
            server_limits: Vec::new(),
            client_limits: Vec::new(),
            client_outbound: Vec::new(),
            client_to_server: Vec::new(),
            server_extra: String::new(),
            client_extra: String::new(),
            server_workers: None,
        }
    }

    /// A spec like the server's (orders/api in front of the app, its policy file), named `name`.
    pub fn server_spec<'a>(&'a self, name: &'a str) -> SidecarSpec<'a> {
        SidecarSpec::new(name, &self.api, &self.server_policy).inbound(self.app.addr)
    }

    /// A spec like the client's (frontend/web, its policy file) with one outbound to `inbound`.
    pub fn client_spec_to<'a>(&'a self, name: &'a str, inbound: SocketAddr) -> SidecarSpec<'a> {
        SidecarSpec::new(name, &self.web, &self.client_policy).outbound(inbound, &self.api.id)
    }

    /// Another client like the pair's, to the pair's server.
    pub fn client_spec<'a>(&'a self, name: &'a str) -> SidecarSpec<'a> {
        self.client_spec_to(name, self.server.inbound.expect("the server sidecar has an inbound"))
    }
}

impl PairSpec {
    /// In `mesh` (a CA made beforehand) instead of a new one.
    pub fn mesh(mut self, mesh: Mesh) -> Self {
        self.mesh = Some(mesh);
        self
    }
    /// The server follows a file of its own, `server-policy.toml` (missing if `None`), and
    /// the client `client-policy.toml` with the pair's policy, so one side can change alone.
    pub fn server_policy(mut self, text: Option<&str>) -> Self {
        self.server_policy = Some(text.map(str::to_owned));
        self
    }
    pub fn server_limit(mut self, key: &str, value: &str) -> Self {
        self.server_limits.push((key.to_owned(), value.to_owned()));
        self
    }
    pub fn client_limit(mut self, key: &str, value: &str) -> Self {
        self.client_limits.push((key.to_owned(), value.to_owned()));
        self
    }
    /// One more outbound on the client, after the one to the server: `(connect, server)`.
    pub fn client_outbound(mut self, connect: SocketAddr, server: &str) -> Self {
        self.client_outbound.push((connect, server.to_owned()));
        self
    }
    /// One more outbound on the client to the server's inbound, expecting `server` (another
    /// identity than the server's: for refusals), after those of [`PairSpec::client_outbound`].
    pub fn client_outbound_to_server(mut self, server: &str) -> Self {
        self.client_to_server.push(server.to_owned());
        self
    }
    /// TOML tables (`[admin]`, `[events]`) appended to the server's sidecar.toml.
    pub fn server_config(mut self, toml: &str) -> Self {
        self.server_extra.push_str(toml);
        self
    }
    /// TOML tables appended to the client's sidecar.toml.
    pub fn client_config(mut self, toml: &str) -> Self {
        self.client_extra.push_str(toml);
        self
    }
    /// `TOKIO_WORKER_THREADS` for the server process.
    pub fn server_workers(mut self, n: usize) -> Self {
        self.server_workers = Some(n);
        self
    }

    /// Issues both identities, writes the policy file(s), starts the app, the server (waiting
    /// for its inbound port) and the client.
    pub fn start(self) -> Pair {
        let mesh = self.mesh.unwrap_or_default();
        let api = mesh.identity("orders", "api");
        let web = mesh.identity("frontend", "web");
        let (server_policy, client_policy) = match &self.server_policy {
            None => {
                let p = mesh.write_file("policy.toml", &self.policy);
                (p.clone(), p)
            }
            Some(own) => {
                let server = match own {
                    Some(text) => mesh.write_file("server-policy.toml", text),
                    None => mesh.path("server-policy.toml"),
                };
                (server, mesh.write_file("client-policy.toml", &self.policy))
            }
        };
        let app = App::start();
        let mut spec = SidecarSpec::new("server", &api, &server_policy).inbound(app.addr);
        for (k, v) in &self.server_limits {
            spec = spec.limit(k, v);
        }
        if let Some(n) = self.server_workers {
            spec = spec.workers(n);
        }
        if !self.server_extra.is_empty() {
            spec = spec.extra(&self.server_extra);
        }
        let server = mesh.sidecar(spec);
        let inbound = server.inbound.expect("the server sidecar announces its inbound port");
        let mut spec = SidecarSpec::new("client", &web, &client_policy).outbound(inbound, &api.id);
        for (connect, server) in &self.client_outbound {
            spec = spec.outbound(*connect, server);
        }
        for server in &self.client_to_server {
            spec = spec.outbound(inbound, server);
        }
        for (k, v) in &self.client_limits {
            spec = spec.limit(k, v);
        }
        if !self.client_extra.is_empty() {
            spec = spec.extra(&self.client_extra);
        }
        let client = mesh.sidecar(spec);
        Pair { mesh, api, web, app, server, client, server_policy, client_policy }
    }
}

/// Everything a sidecar printed so far.
#[derive(Default)]
struct Log {
    events: Vec<Value>,
    /// stdout lines that are not one JSON object (the contract allows none).
    not_json: Vec<String>,
    stderr: Vec<String>,
    stdout_closed: bool,
}

type Shared = Arc<(Mutex<Log>, Condvar)>;

fn lock(log: &Shared) -> MutexGuard<'_, Log> {
    log.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running `mesh-proxy run`, killed on drop.
pub struct Sidecar {
    pub name: String,
    pub config: PathBuf,
    child: Option<Child>,
    log: Shared,
    /// The sidecar's own SPIFFE ID, from `proxy.started`.
    pub id: String,
    pub inbound: Option<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
}

impl Sidecar {
    /// Starts `mesh-proxy run --config CONFIG` (from `/`, so nothing resolves against the
    /// working directory) and waits for `proxy.started`, reading the bound ports from it.
    pub fn start(name: &str, config: &Path) -> Self {
        Self::start_with_env(name, config, &[])
    }

    /// [`Sidecar::start`] with extra environment variables for the process.
    pub fn start_with_env(name: &str, config: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary("mesh-proxy"))
            .envs(env.iter().copied())
            .arg("run")
            .arg("--config")
            .arg(config)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mesh-proxy can be started");
        let log: Shared = Arc::default();
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut g = lock(&l);
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => g.events.push(v),
                    _ => g.not_json.push(line),
                }
                l.1.notify_all();
            }
            lock(&l).stdout_closed = true;
            l.1.notify_all();
        });
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                lock(&l).stderr.push(line);
                l.1.notify_all();
            }
        });
        let mut sc = Self {
            name: name.to_owned(),
            config: config.to_owned(),
            child: Some(child),
            log,
            id: String::new(),
            inbound: None,
            outbound: Vec::new(),
        };
        let started = sc.wait_for("proxy.started", |e| e["event"] == "proxy.started");
        sc.id = started["src_id"].as_str().unwrap_or_default().to_owned();
        let detail = started["detail"].as_str().unwrap_or_default();
        for (key, addr) in detail.split_whitespace().filter_map(|w| w.split_once('=')) {
            let Ok(addr) = addr.parse::<SocketAddr>() else { continue };
            if key == "inbound" {
                sc.inbound = Some(addr);
            } else if let Some(i) = key.strip_prefix("outbound[").and_then(|k| k.strip_suffix(']')) {
                let i: usize = i.parse().unwrap_or_else(|_| panic!("odd key {key} in {detail}"));
                assert_eq!(i, sc.outbound.len(), "outbounds listed out of order in {detail}");
                sc.outbound.push(addr);
            }
        }
        sc
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the sidecar was started").id()
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        Cmd::new("kill").args(["-s", sig, &self.pid().to_string()]).run().assert_ok();
    }

    /// Events printed so far.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.log).events.clone()
    }

    /// How many events have been printed so far (for [`Sidecar::next_after`]).
    pub fn mark(&self) -> usize {
        lock(&self.log).events.len()
    }

    pub fn stderr(&self) -> Vec<String> {
        lock(&self.log).stderr.clone()
    }

    /// stdout lines that were not JSON objects.
    pub fn not_json(&self) -> Vec<String> {
        lock(&self.log).not_json.clone()
    }

    /// Everything printed, for failure messages.
    pub fn transcript(&self) -> String {
        let g = lock(&self.log);
        let mut s = format!("--- sidecar {} ({}) events ---\n", self.name, self.config.display());
        for e in &g.events {
            s.push_str(&e.to_string());
            s.push('\n');
        }
        for l in &g.not_json {
            s.push_str(&format!("NOT JSON: {l}\n"));
        }
        s.push_str("--- stderr ---\n");
        for l in &g.stderr {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Waits (up to [`DEADLINE`]) until `f` finds what it looks for in the events so far.
    #[track_caller]
    pub fn wait_until<T>(&self, what: &str, mut f: impl FnMut(&[Value]) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        let mut g = lock(&self.log);
        loop {
            if let Some(found) = f(&g.events) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || g.stdout_closed {
                let why = if g.stdout_closed { "the sidecar exited" } else { "timed out" };
                drop(g);
                panic!("waiting for {what} on sidecar {}: {why}\n{}", self.name, self.transcript());
            }
            g = self.log.1.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits until a stderr line matches `pred`; returns it.
    #[track_caller]
    pub fn wait_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut g = lock(&self.log);
        loop {
            if let Some(l) = g.stderr.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(g);
                panic!(
                    "waiting for {what} on sidecar {}'s stderr: timed out\n{}",
                    self.name,
                    self.transcript()
                );
            }
            g = self.log.1.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The first event from index `from` on matching `pred`.
    #[track_caller]
    pub fn wait_from(&self, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_until(what, |events| events.iter().skip(from).find(|e| pred(e)).cloned())
    }

    /// Waits until `n` events match `pred`; returns them.
    #[track_caller]
    pub fn wait_count(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.wait_until(what, |events| {
            let found: Vec<Value> = events.iter().filter(|e| pred(e)).cloned().collect();
            (found.len() >= n).then_some(found)
        })
    }

    /// The first event matching `pred`, printed at any time.
    #[track_caller]
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_from(0, what, pred)
    }

    /// The first event named `name` at or after index `mark`.
    #[track_caller]
    pub fn next_named(&self, mark: usize, name: &str) -> Value {
        self.wait_from(mark, name, |e| e["event"] == name)
    }

    /// The first per-connection event (see [`CONNECTION_EVENTS`]) at or after index `mark`.
    #[track_caller]
    pub fn next_conn_event(&self, mark: usize) -> Value {
        self.wait_from(mark, "a per-connection event", is_conn_event)
    }

    /// Per-connection events printed so far.
    pub fn conn_events(&self) -> Vec<Value> {
        self.events().into_iter().filter(is_conn_event).collect()
    }

    /// Waits (up to `limit`) for the process to exit and returns its status.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        {
            // stdout closes when the process exits: wait for that rather than polling.
            let mut g = lock(&self.log);
            while !g.stdout_closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    drop(g);
                    panic!("sidecar {} did not exit within {limit:?}\n{}", self.name, self.transcript());
                }
                g = self.log.1.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        let child = self.child.as_mut().expect("the sidecar was started");
        child.wait().expect("waiting for a child we started")
    }
}

fn is_conn_event(e: &Value) -> bool {
    CONNECTION_EVENTS.iter().any(|n| e["event"] == *n)
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A string field of an event ("" when absent or not a string).
pub fn field<'v>(e: &'v Value, key: &str) -> &'v str {
    e[key].as_str().unwrap_or("")
}

/// What an [`App`] has seen.
#[derive(Default, Debug, Clone)]
pub struct AppSeen {
    /// Connections accepted.
    pub connections: usize,
    /// Every byte received, over all connections (capped at [`App::RECORD_CAP`]).
    pub bytes: Vec<u8>,
}

/// The local app behind a sidecar (or a trap standing where no one should connect): a
/// `std::net` listener on `127.0.0.1:0` that echoes and records every byte it receives.
pub struct App {
    pub addr: SocketAddr,
    seen: Arc<(Mutex<AppSeen>, Condvar)>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Default for App {
    fn default() -> Self {
        Self::start()
    }
}

impl App {
    /// Bounds the recording (tests send far less).
    pub const RECORD_CAP: usize = 8 << 20;
    /// A connection silent for this long is dropped, so no thread outlives a test for long.
    const IDLE: Duration = Duration::from_secs(60);

    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the app on 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let seen: Arc<(Mutex<AppSeen>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                s.0.lock().unwrap_or_else(|p| p.into_inner()).connections += 1;
                s.1.notify_all();
                let s = s.clone();
                std::thread::spawn(move || echo(conn, &s));
            }
        });
        Self { addr, seen, stop, accept: Some(accept) }
    }

    pub fn seen(&self) -> AppSeen {
        self.seen.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn connections(&self) -> usize {
        self.seen().connections
    }
}

fn echo(mut conn: TcpStream, seen: &(Mutex<AppSeen>, Condvar)) {
    let _ = conn.set_read_timeout(Some(App::IDLE));
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut g = seen.0.lock().unwrap_or_else(|p| p.into_inner());
            let room = App::RECORD_CAP.saturating_sub(g.bytes.len());
            g.bytes.extend_from_slice(&buf[..n.min(room)]);
        }
        seen.1.notify_all();
        if conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A plaintext client of a sidecar's outbound port (the app side), with bounded reads.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_read_timeout(Some(DEADLINE)).expect("setting a read timeout");
        stream.set_write_timeout(Some(DEADLINE)).expect("setting a write timeout");
        let _ = stream.set_nodelay(true);
        Self { stream }
    }

    /// Sends `data` and reads exactly as many bytes back (the app echoes).
    #[track_caller]
    pub fn roundtrip(&mut self, data: &[u8]) -> Vec<u8> {
        self.stream.write_all(data).unwrap_or_else(|e| panic!("writing {} bytes: {e}", data.len()));
        let mut back = vec![0u8; data.len()];
        self.stream.read_exact(&mut back).unwrap_or_else(|e| panic!("reading the echo: {e}"));
        back
    }

    /// Half-closes and reads until EOF or an error (bounded by the read timeout); returns what
    /// arrived and whether the stream ended cleanly.
    pub fn finish(mut self) -> (Vec<u8>, bool) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let clean = self.stream.read_to_end(&mut got).is_ok();
        (got, clean)
    }

    /// Reads until EOF or an error without sending anything; `Err` only if nothing ended the
    /// stream within `limit`.
    pub fn read_until_closed(&mut self, limit: Duration) -> Result<Vec<u8>, String> {
        self.stream.set_read_timeout(Some(limit)).expect("setting a read timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Err(format!("still open after {limit:?} ({} bytes read)", got.len()))
                }
                Err(_) => return Ok(got),
            }
        }
    }
}

/// Connects, sends `data`, half-closes, reads to the end: what a short request-response app
/// exchange sees. The write may fail when the sidecar closes first; that is reported as
/// nothing received.
pub fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = Client::connect(addr);
    if c.stream.write_all(data).is_err() {
        return Vec::new();
    }
    c.finish().0
}

/// A deterministic, non-repeating-looking payload of `n` bytes.
pub fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + i / 251) as u8) ^ seed).collect()
}

/// The sample policy, examples/policy.toml (the README shows it, the demo runs it): frontend
/// -> orders and orders/api -> payments/charge allowed, frontend/rogue -> orders denied by a rule,
/// everything else by default.
pub const SAMPLE_POLICY: &str = include_str!("../../examples/policy.toml");

/// Runs `python3 -c <certfactory.tool>` with `args` and whatever `more` adds.
fn py_tool(args: &[&str], more: impl FnOnce(Cmd) -> Cmd) -> Output {
    let dir = py_script("");
    let code = format!(
        "import sys; sys.path.insert(0, {:?}); import certfactory; sys.exit(certfactory.tool(sys.argv[1:]))",
        dir.display().to_string()
    );
    let o = more(Cmd::new("python3").arg("-c").arg(code).args(args)).run();
    assert!(o.success(), "certfactory tool failed:\n{o}");
    o
}

/// A peer connecting straight to a sidecar's inbound port with Python `ssl` (or raw TCP).
pub struct Probe {
    addr: SocketAddr,
    args: Vec<String>,
}

impl Probe {
    pub fn to(addr: SocketAddr) -> Self {
        Self { addr, args: Vec::new() }
    }
    /// Presents `ident`'s cert.pem (the whole chain) and key.pem.
    pub fn identity(mut self, ident: &Identity) -> Self {
        self.args.extend(["--cert".into(), ident.cert().display().to_string()]);
        self.args.extend(["--key".into(), ident.key().display().to_string()]);
        self
    }
    /// Verifies the server against this bundle.
    pub fn verify(mut self, bundle: &Path) -> Self {
        self.args.extend(["--ca".into(), bundle.display().to_string()]);
        self
    }
    pub fn tls12(mut self) -> Self {
        self.args.push("--tls12".into());
        self
    }
    /// Sends `text` after the handshake and reads as many bytes back.
    pub fn send(mut self, text: &str) -> Self {
        self.args.extend(["--send".into(), text.into()]);
        self
    }
    /// Connects a second time offering the first connection's TLS session; the report of that
    /// connection is under `again` (`resumed`: whether the server took the session).
    pub fn again(mut self) -> Self {
        self.args.push("--again".into());
        self
    }
    /// Like [`Probe::again`], but the second connection waits until the presented
    /// certificate has expired (a `short_lived` variant: seconds), then offers the session.
    pub fn again_after_expiry(mut self) -> Self {
        self.args.push("--again-after-expiry".into());
        self
    }
    /// Plain TCP: sends `bytes`, half-closes, reads to EOF. No TLS at all.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.args.extend(["--raw-hex".into(), hex]);
        self
    }

    /// Runs the probe; returns its JSON report (`local`, `handshake`, `received`, `error`,
    /// `peer_serial`, `peer_uris`, `version`).
    pub fn run(self) -> Value {
        let port = self.addr.port().to_string();
        let o = py_tool(&["probe", "127.0.0.1", &port], |c| c.args(&self.args));
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("probe printed no JSON ({e}):\n{o}"))
    }
}

/// A Python `ssl` TLS 1.3 server (certfactory's `serve`): what a mesh-proxy cannot be, such
/// as a peer that keeps serving after its certificate expired, or an impostor CA. Reports one
/// JSON line per connection (`handshake`, `resumed`, `received`). Killed on drop.
pub struct TlsServer {
    pub addr: SocketAddr,
    child: crate::ca_server::LineChild,
}

impl TlsServer {
    /// Serves `ident`'s chain and key; verifies client certificates against `client_ca` when
    /// given; echoes what it receives when `echo`.
    pub fn start(ident: &Identity, client_ca: Option<&Path>, echo: bool) -> Self {
        let dir = py_script("");
        let code = format!(
            "import sys; sys.path.insert(0, {:?}); import certfactory; sys.exit(certfactory.tool(sys.argv[1:]))",
            dir.display().to_string()
        );
        let (cert, key) = (ident.cert().display().to_string(), ident.key().display().to_string());
        let mut args =
            vec!["-c".to_string(), code, "serve".into(), "--cert".into(), cert, "--key".into(), key];
        if let Some(ca) = client_ca {
            args.extend(["--ca".into(), ca.display().to_string()]);
        }
        if echo {
            args.push("--echo".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = crate::ca_server::LineChild::spawn("tls-server", Path::new("python3"), &args);
        let port = child.wait_lines("the TLS server's port", |lines| {
            lines.iter().find_map(|l| serde_json::from_str::<Value>(l).ok()?["port"].as_u64())
        });
        Self { addr: SocketAddr::from(([127, 0, 0, 1], port as u16)), child }
    }

    /// The per-connection reports so far.
    pub fn connections(&self) -> Vec<Value> {
        self.child
            .stdout()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("handshake").is_some())
            .collect()
    }

    /// Waits until `n` connections have been reported; returns them.
    pub fn wait_connections(&self, n: usize) -> Vec<Value> {
        self.child.wait_lines(&format!("{n} reported connections"), |lines| {
            let got: Vec<Value> = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("handshake").is_some())
                .collect();
            (got.len() >= n).then_some(got)
        })
    }

    pub fn transcript(&self) -> String {
        self.child.transcript()
    }
}

/// Runs `mesh-proxy <args>` to completion.
pub fn mesh_proxy(args: &[&str]) -> Output {
    Cmd::new(binary("mesh-proxy")).args(args).run()
}
