//! `mesh-demo` run as a real process: stopped by SIGTERM or SIGINT it leaves none of the
//! processes it started behind, a child that dies on its own is reported, a reused `--dir`
//! names the real cause, and `--version` prints the crate version.
//!
//! The demo's processes are found by scanning /proc for every process whose parent chain
//! leads to the demo, recorded (with each one's start time, so a reused pid is not mistaken
//! for a survivor) while the demo runs; once the demo is gone they would be orphans.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mesh_tests::{binary, Cmd};

/// How long the demo may take to set its mesh up (a CA, four enrollments, seven calls).
const UP: Duration = Duration::from_secs(120);
/// How long a stopped demo and its processes may take to go away.
const GONE: Duration = Duration::from_secs(30);

/// One process as /proc shows it: (pid, start time in clock ticks since boot).
type Proc = (u32, u64);

/// `/proc/PID/stat`: (state, ppid, start time). The command name in parentheses may hold
/// spaces, so the fields are counted from the last ')'.
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.first()?.chars().next()?, f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// Every live process whose parent chain leads to `root`.
fn descendants(root: u32) -> Vec<Proc> {
    let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").expect("/proc is readable").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some((state, ppid, start)) = stat(pid) {
            if state != 'Z' {
                children.entry(ppid).or_default().push((pid, start));
            }
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &(c, start) in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            found.push((c, start));
            todo.push(c);
        }
    }
    found
}

/// Whether the process recorded as `p` still runs (a zombie has stopped; a pid with another
/// start time is someone else).
fn alive(p: Proc) -> bool {
    stat(p.0).is_some_and(|(state, _, start)| state != 'Z' && start == p.1)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
        .unwrap_or_default()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args(["-s", sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -s {sig} {pid} failed");
}

/// A running `mesh-demo --keep`; killed (with whatever it started) if the test fails.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: mpsc::Receiver<String>,
    procs: Vec<Proc>,
}

impl Demo {
    fn start_keep(dir: &Path) -> Demo {
        let mut child = Command::new(binary("mesh-demo"))
            .args(["--keep", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mesh-demo starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut demo = Demo { child, lines, seen: Vec::new(), stderr, procs: Vec::new() };
        demo.wait_line("The mesh keeps running", UP);
        // Everything is up once the hint is printed: the CA server and four sidecars.
        demo.procs = descendants(demo.child.id());
        demo
    }

    /// Waits for a stdout line containing `needle`.
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => {
                    let err: Vec<String> = self.stderr.try_iter().collect();
                    panic!(
                        "mesh-demo printed no {needle:?} within {limit:?}:\n{}\nstderr:\n{}",
                        self.seen.join("\n"),
                        err.join("\n")
                    )
                }
            }
        }
    }

    /// Waits for the demo itself to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + GONE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on our child") {
                return status;
            }
            assert!(Instant::now() < deadline, "mesh-demo did not exit within {GONE:?} of the signal");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that no process the demo started is left, waiting up to [`GONE`].
    fn assert_nothing_left(&mut self) {
        let deadline = Instant::now() + GONE;
        loop {
            let left: Vec<Proc> = self.procs.iter().copied().filter(|&p| alive(p)).collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = left.iter().map(|p| format!("{} {}", p.0, cmdline(p.0))).collect();
                for p in &left {
                    signal(p.0, "KILL");
                }
                panic!("mesh-demo left {} process(es) running:\n{}", left.len(), names.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &p in &self.procs {
            if alive(p) {
                let _ = Command::new("kill").args(["-s", "KILL", &p.0.to_string()]).status();
            }
        }
    }
}

/// The demo's own processes: the CA server and one sidecar per workload.
fn assert_mesh_processes(demo: &Demo) {
    let lines: Vec<String> = demo.procs.iter().map(|p| cmdline(p.0)).collect();
    let ca = lines.iter().filter(|l| l.contains("mesh-ca serve")).count();
    let proxies = lines.iter().filter(|l| l.contains("mesh-proxy run")).count();
    assert_eq!(
        (ca, proxies),
        (1, 4),
        "expected the CA server and 4 sidecars under the demo:\n{}",
        lines.join("\n")
    );
}

fn stops_everything_on(sig: &str) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let mut demo = Demo::start_keep(&tmp.path().join("demo"));
    assert_mesh_processes(&demo);
    signal(demo.child.id(), sig);
    let status = demo.wait_exit();
    demo.assert_nothing_left();
    assert!(!status.success(), "a demo stopped by SIG{sig} exits non-zero, got {status}");
}

#[test]
fn sigterm_stops_every_process_the_demo_started() {
    stops_everything_on("TERM");
}

#[test]
fn sigint_stops_every_process_the_demo_started() {
    stops_everything_on("INT");
}

/// `--keep` names each sidecar's admin URL, and the table is followed by a metric line read
/// from a sidecar's `/metrics`.
#[test]
fn keep_mode_shows_metrics_and_admin_urls() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let mut demo = Demo::start_keep(&tmp.path().join("demo"));
    let metric =
        demo.seen.iter().find(|l| l.trim_start().starts_with("mesh_policy_decisions_total{")).cloned();
    assert!(metric.is_some(), "no metric line after the table:\n{}", demo.seen.join("\n"));
    // The rest of the --keep hints follow the line waited for.
    let url = demo.wait_line("/metrics", Duration::from_secs(10));
    let port: u16 = url
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no admin URL in {url:?}"));
    let out =
        Cmd::new("curl").args(["-sS", "--max-time", "10", &format!("http://127.0.0.1:{port}/metrics")]).run();
    out.assert_ok();
    assert!(out.stdout.contains("mesh_build_info"), "{port}/metrics is not a sidecar's metrics:\n{out}");
    signal(demo.child.id(), "TERM");
    demo.wait_exit();
    demo.assert_nothing_left();
}

/// A sidecar killed under the demo is named on stderr, and the demo stops the rest.
#[test]
fn a_child_that_dies_is_reported_and_the_rest_stopped() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let mut demo = Demo::start_keep(&tmp.path().join("demo"));
    let web = demo
        .procs
        .iter()
        .copied()
        .find(|p| cmdline(p.0).contains("web.sidecar.toml"))
        .unwrap_or_else(|| panic!("no web sidecar under the demo"));
    signal(web.0, "KILL");
    let status = demo.wait_exit();
    demo.assert_nothing_left();
    let err = demo.stderr_text();
    assert!(!status.success(), "the demo exits non-zero when a child dies, got {status}");
    assert!(
        err.contains("web's sidecar") && err.contains("exited") && err.contains("signal: 9"),
        "stderr does not report the dead sidecar:\n{err}"
    );
}

/// A second run in the same `--dir` fails on the CA the first run left there, and says so,
/// instead of "mesh-ca serve did not start".
#[test]
fn a_reused_dir_names_the_real_cause() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("demo");
    let first = Cmd::new(binary("mesh-demo")).arg("--dir").arg(&dir).run();
    first.assert_ok();
    let second = Cmd::new(binary("mesh-demo")).arg("--dir").arg(&dir).run();
    assert_eq!(second.code(), Some(1), "{second}");
    let ca = dir.join("ca").display().to_string();
    for needle in [ca.as_str(), "already holds a CA", "earlier run"] {
        second.assert_error_naming(&[needle]);
    }
    assert!(!second.stderr.contains("did not start"), "{second}");
}

#[test]
fn version_is_the_crate_version() {
    let out = Cmd::new(binary("mesh-demo")).arg("--version").run();
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("mesh-demo {}", env!("CARGO_PKG_VERSION")), "{out}");
}
