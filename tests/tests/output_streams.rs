//! A closed or stalled stdout/stderr never stops or stalls `mesh-ca serve` or `mesh-proxy
//! run` (THREATS.md, Events). The real binaries run with their output streams closed, or
//! connected to a pipe (or socket) that nobody reads and that is full, while they handle
//! bad-token enrollments and denied connections; they must go on answering and exit cleanly
//! when asked.
//!
//! Waits are for a line, a reply or an exit, each with a deadline.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use mesh_tests::ca_server::{Api, DEADLINE};
use mesh_tests::proxy::{exchange, App, Identity, Mesh, SidecarSpec, SAMPLE_POLICY};
use mesh_tests::{binary, Cmd, TestCa};
use serde_json::{json, Value};

/// Bad-token enrollments sent in one go: their audit lines (~130 bytes each) are several
/// times what a 64 KiB pipe holds.
const BAD_TOKENS: usize = 2000;

/// Waits up to `limit` for `child` to exit; kills it (SIGKILL) and returns None if it does not.
fn exit_within(child: Child, limit: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let mut child = child;
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            None
        }
    }
}

/// Collects the lines of `r` on a thread of its own.
fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            l.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    lines
}

fn snapshot(lines: &Mutex<Vec<String>>) -> Vec<String> {
    lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Reads lines from `r` until one contains `needle`; returns it (panics at EOF).
fn line_with(r: &mut impl BufRead, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).expect("reading the child's output");
        assert!(n > 0, "the output ended before a line with {needle:?}");
        if line.contains(needle) {
            return line;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mesh-ca serve
// ---------------------------------------------------------------------------------------------

/// `mesh-ca serve` (unencrypted test CA, no rate limit) with stdout and stderr piped; reads
/// stdout up to `ca.started` and returns the child, its stdout (not read further) and an API
/// client.
fn start_ca(ca: &TestCa) -> (Child, ChildStdout, Api) {
    let dir = ca.dir.display().to_string();
    let mut child = Command::new(binary("mesh-ca"))
        .args(["serve", "--dir", &dir, "--listen", "127.0.0.1:0", "--rate-limit", "0"])
        .env_remove(mesh_tests::PASSPHRASE_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mesh-ca can be started");
    // One line at a time, without a BufReader that would read ahead and keep what it read.
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut line = Vec::new();
    let started: Value = loop {
        let mut b = [0u8; 1];
        let n = std::io::Read::read(&mut out, &mut b).expect("reading mesh-ca's stdout");
        assert!(n == 1, "mesh-ca serve exited before ca.started");
        if b[0] != b'\n' {
            line.push(b[0]);
            continue;
        }
        let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
        if v["event"] == "ca.started" {
            break v;
        }
        line.clear();
    };
    let addr: SocketAddr =
        started["listen"].as_str().and_then(|s| s.parse().ok()).expect("ca.started names listen");
    let bundle = ca.path("bundle.pem");
    let o = ca.cmd("bundle").run();
    o.assert_ok();
    std::fs::write(&bundle, &o.stdout).expect("writing bundle.pem");
    (child, out, Api { url: format!("https://{addr}"), bundle })
}

/// Sends [`BAD_TOKENS`] enrollments with a malformed token on one keep-alive connection and
/// asserts every one was answered with the refusal.
#[track_caller]
fn bad_tokens_are_all_refused(api: &Api) {
    let body = json!({"token": "not-a-join-token", "csr": "-"}).to_string();
    let n = BAD_TOKENS.to_string();
    let r = api.request("POST", "/v1/enroll", &["--json", &body, "--repeat", &n]);
    assert!(r.error.is_none(), "the CA stopped answering: {r:?}");
    assert_eq!(r.statuses.len(), BAD_TOKENS, "{r:?}");
    assert!(r.statuses.iter().all(|s| *s == 403), "every bad token is refused: {r:?}");
    assert_eq!(r.json["error"], "token_rejected", "{r:?}");
}

#[test]
fn the_ca_keeps_answering_after_its_stdout_is_closed() {
    let ca = TestCa::init_unencrypted();
    let (mut child, out, api) = start_ca(&ca);
    let err = collect(child.stderr.take().expect("stderr is piped"));
    drop(out); // the log reader goes away: every audit line now meets EPIPE
    bad_tokens_are_all_refused(&api);
    assert!(child.try_wait().expect("try_wait").is_none(), "mesh-ca exited\n{:?}", snapshot(&err));
    // The failure is noted once on stderr, not once per line.
    let notes: Vec<String> = snapshot(&err).into_iter().filter(|l| l.contains("stdout failed")).collect();
    assert_eq!(notes.len(), 1, "{:?}", snapshot(&err));
    // It still stops cleanly on SIGTERM.
    Cmd::new("kill").args(["-s", "TERM", &child.id().to_string()]).run().assert_ok();
    let status = exit_within(child, DEADLINE).expect("mesh-ca serve exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{:?}", snapshot(&err));
}

#[test]
fn the_ca_keeps_answering_while_nobody_reads_its_stdout() {
    let ca = TestCa::init_unencrypted();
    let (mut child, out, api) = start_ca(&ca);
    let err = collect(child.stderr.take().expect("stderr is piped"));
    // `out` stays open and unread: the pipe fills after a few hundred audit lines.
    bad_tokens_are_all_refused(&api);
    bad_tokens_are_all_refused(&api);
    assert!(child.try_wait().expect("try_wait").is_none(), "mesh-ca exited\n{:?}", snapshot(&err));
    Cmd::new("kill").args(["-s", "TERM", &child.id().to_string()]).run().assert_ok();
    let status = exit_within(child, DEADLINE).expect("mesh-ca serve exits on SIGTERM with its stdout full");
    assert!(status.success(), "{status:?}");
    drop(out);
}

// ---------------------------------------------------------------------------------------------
// mesh-proxy run
// ---------------------------------------------------------------------------------------------

/// A server sidecar (`orders/api`, in front of an echo app) started by hand with the given
/// stderr, stdout piped; clients `frontend/web` (allowed by the server) and `frontend/rogue`
/// (denied by the server, after the handshake: each refusal is a `policy.deny` event on the
/// server's stdout) are ordinary test sidecars.
struct Setup {
    mesh: Mesh,
    web: Identity,
    rogue: Identity,
    _app: App,
    server: Child,
    server_stdout: Option<ChildStdout>,
}

impl Setup {
    fn start(stderr: Stdio, one_worker: bool) -> Self {
        let mesh = Mesh::new();
        let api = mesh.identity("orders", "api");
        let web = mesh.identity("frontend", "web");
        let rogue = mesh.identity("frontend", "rogue");
        let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
        let app = App::start();
        let config = mesh.write_config(&SidecarSpec::new("server", &api, &policy).inbound(app.addr));
        let mut cmd = Command::new(binary("mesh-proxy"));
        if one_worker {
            cmd.env("TOKIO_WORKER_THREADS", "1");
        }
        let mut server = cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("mesh-proxy can be started");
        let server_stdout = server.stdout.take();
        Self { mesh, web, rogue, _app: app, server, server_stdout }
    }

    /// A client sidecar for `ident` with one outbound to `inbound`; returns its outbound port.
    fn client(&self, name: &str, ident: &Identity, inbound: SocketAddr) -> mesh_tests::proxy::Sidecar {
        let policy = self.mesh.write_file(
            &format!("{name}-policy.toml"),
            SAMPLE_POLICY.replace("[[deny]]", "[[allow]]").as_str(),
        );
        let api = self.mesh.id("orders", "api");
        self.mesh.sidecar(SidecarSpec::new(name, ident, &policy).outbound(inbound, &api))
    }
}

/// The inbound address from the sidecar's `serving` line on stderr.
fn inbound_from(serving: &str) -> SocketAddr {
    serving
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inbound="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no inbound address in {serving:?}"))
}

/// Denied connections through `rogue` (events for the server's stdout), then an allowed one
/// through `web` that must pass.
#[track_caller]
fn denied_then_allowed(rogue: SocketAddr, web: SocketAddr, denied: usize) {
    for i in 0..denied {
        assert!(exchange(rogue, b"let me in").is_empty(), "denied connection {i} reached the app");
    }
    assert_eq!(exchange(web, b"still serving"), b"still serving", "the server stopped forwarding");
}

#[test]
fn a_sidecar_keeps_serving_after_its_stdout_and_stderr_are_closed() {
    let mut s = Setup::start(Stdio::piped(), false);
    let mut err = BufReader::new(s.server.stderr.take().expect("stderr is piped"));
    let inbound = inbound_from(&line_with(&mut err, " serving "));
    let (web, rogue) = (s.client("web", &s.web, inbound), s.client("rogue", &s.rogue, inbound));
    drop(err);
    drop(s.server_stdout.take());
    denied_then_allowed(rogue.outbound[0], web.outbound[0], 50);
    denied_then_allowed(rogue.outbound[0], web.outbound[0], 50);
    assert!(s.server.try_wait().expect("try_wait").is_none(), "the sidecar exited");
    Cmd::new("kill").args(["-s", "TERM", &s.server.id().to_string()]).run().assert_ok();
    let status = exit_within(s.server, DEADLINE).expect("the sidecar exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// stdout closed, so the event sink fails and says so on stderr; stderr is a socket nobody
/// reads, filled up first. On a one-worker sidecar (one thread runs every connection), a
/// blocking write of that message would stop all traffic.
#[test]
fn a_sidecar_whose_stderr_is_full_and_stdout_closed_does_not_stall() {
    let (mine, theirs) = UnixStream::pair().expect("a socket pair");
    let filler = theirs.try_clone().expect("a second handle on the sidecar's end");
    let mut s = Setup::start(Stdio::from(std::os::fd::OwnedFd::from(theirs)), true);
    let mut err = BufReader::new(mine.try_clone().expect("a reading handle"));
    let inbound = inbound_from(&line_with(&mut err, " serving "));
    let (web, rogue) = (s.client("web", &s.web, inbound), s.client("rogue", &s.rogue, inbound));
    // Fill the sidecar's stderr until the kernel takes no more (non-blocking only while
    // filling: the flag is shared with the sidecar's descriptor).
    filler.set_nonblocking(true).expect("non-blocking");
    let chunk = [b'#'; 4096];
    let mut filled = 0usize;
    loop {
        match (&filler).write(&chunk) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the sidecar's stderr: {e}"),
        }
    }
    filler.set_nonblocking(false).expect("blocking again");
    assert!(filled >= 64 * 1024, "only {filled} bytes filled the socket");
    drop(s.server_stdout.take());
    denied_then_allowed(rogue.outbound[0], web.outbound[0], 50);
    denied_then_allowed(rogue.outbound[0], web.outbound[0], 50);
    assert!(s.server.try_wait().expect("try_wait").is_none(), "the sidecar exited");
    Cmd::new("kill").args(["-s", "TERM", &s.server.id().to_string()]).run().assert_ok();
    let status = exit_within(s.server, DEADLINE).expect("the sidecar exits on SIGTERM with its stderr full");
    assert!(status.success(), "{status:?}");
    drop((mine, err));
}

/// stdout is a pipe nobody reads: a few hundred `policy.deny` events fill it. Traffic goes on,
/// and SIGTERM still ends the process.
#[test]
fn a_sidecar_whose_stdout_nobody_reads_keeps_serving_and_exits_on_sigterm() {
    let mut s = Setup::start(Stdio::piped(), false);
    let mut err = BufReader::new(s.server.stderr.take().expect("stderr is piped"));
    let inbound = inbound_from(&line_with(&mut err, " serving "));
    let err = collect(err.into_inner());
    let (web, rogue) = (s.client("web", &s.web, inbound), s.client("rogue", &s.rogue, inbound));
    // Each policy.deny event is ~500 bytes: 400 of them are about three times the pipe.
    denied_then_allowed(rogue.outbound[0], web.outbound[0], 400);
    assert!(s.server.try_wait().expect("try_wait").is_none(), "the sidecar exited\n{:?}", snapshot(&err));
    Cmd::new("kill").args(["-s", "TERM", &s.server.id().to_string()]).run().assert_ok();
    let status = exit_within(s.server, DEADLINE).expect("the sidecar exits on SIGTERM with its stdout full");
    assert!(status.success(), "{status:?}\n{:?}", snapshot(&err));
    drop(s.server_stdout);
}
