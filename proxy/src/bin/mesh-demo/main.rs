//! `mesh-demo`: a local mesh on embedded defaults, with real processes.
//!
//! A fresh CA (`mesh-ca init` + `mesh-ca serve`) in a temporary directory, three zones
//! (frontend, orders, payments) with small sample apps and a `mesh-proxy` sidecar each that
//! enrolls with a one-time join token (keys stay in the sidecars' memory), then a set of
//! calls, allowed and refused, shown as a table with the sidecar events that explain each
//! refusal, and one of the sidecars' metrics. Cleans up on exit, or keeps running with
//! `--keep`; either way SIGTERM or Ctrl-C stops every process it started (see `children`).
//! Uses only 127.0.0.1.

mod children;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use children::{Children, Group};

const TD: &str = "example.org";
const USAGE: &str = "usage: mesh-demo [--keep] [--dir DIR]

Runs a local zt-mesh: a CA, three zones (frontend, orders, payments) with sample apps and
their sidecars, and shows which calls the mesh allows and refuses, and why.

  --keep        keep the mesh running after the table (Ctrl-C stops it) and print how to poke it
  --dir DIR     work in DIR (new or empty; kept afterwards) instead of a temporary directory
  -V, --version print the version

SIGTERM or Ctrl-C stops every process the demo started; so does a child's unexpected exit,
which is reported.";

/// The demo's policy: the sample policy the README shows and the tests use.
const POLICY: &str = include_str!("../../../../examples/policy.toml");

/// A rogue sidecar's own, permissive policy: its egress check lets everything out, so the
/// refusal must come from the callee's sidecar.
const ROGUE_POLICY: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders", "payments"]

[[allow]]
from = "frontend"
to = "payments"

[[allow]]
from = "frontend"
to = "orders"
"#;

/// A started sidecar (or the CA server): its events file and the ports it said it bound.
struct Sidecar {
    name: &'static str,
    events: PathBuf,
    ports: HashMap<String, u16>,
}

fn main() -> ExitCode {
    let mut keep = false;
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keep" => keep = true,
            "--dir" => dir = args.next().map(PathBuf::from),
            "-V" | "--version" => {
                println!("mesh-demo {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("mesh-demo: unknown argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (std::env::temp_dir().join(format!("zt-mesh-demo-{}", std::process::id())), true),
    };
    // Before any child starts: SIGTERM/SIGINT and a child's death end the demo from the
    // watcher thread, a panic from the hook, anything else by dropping the group.
    let children = Children::default();
    if temporary {
        children.remove_on_exit(&dir);
    }
    if let Err(e) = children.watch() {
        eprintln!("mesh-demo: error: {e}");
        return ExitCode::FAILURE;
    }
    children.stop_on_panic();
    let result = demo(&dir, keep, Group(children.clone()));
    if temporary && !keep && fs::remove_dir_all(&dir).is_ok() {
        println!("Removed {}.", dir.display());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Finds `name` next to this executable; under `cargo run`, builds it first if missing.
fn binary(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = me.parent().ok_or("no executable directory")?;
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").map_err(|_| format!("{} not found next to mesh-demo", name))?;
        let release = dir.ends_with("release");
        eprintln!("building {name} ...");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let ok = cmd.status().map_err(|e| e.to_string())?.success();
        if !ok || !path.exists() {
            return Err(format!("could not build {name}"));
        }
    }
    Ok(path)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A sample app: answers every HTTP request with who it is.
fn sample_app(who: &'static str) -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = format!("hello from {who}\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}

/// Writes a sidecar.toml, starts `mesh-proxy run`, and waits for its `proxy.started` event.
#[allow(clippy::too_many_arguments)]
fn start_sidecar(
    children: &Children,
    proxy: &Path,
    dir: &Path,
    ca_port: u16,
    name: &'static str,
    policy: &str,
    inbound_app: Option<u16>,
    outbound: &[(&str, u16)],
) -> Result<Sidecar, String> {
    let events = dir.join(format!("{name}.events.jsonl"));
    let mut cfg = format!(
        "policy = \"{policy}\"\n\n[identity]\nca_url = \"https://127.0.0.1:{ca_port}\"\nca_bundle = \"ca-bundle.pem\"\ntoken_file = \"tokens/{name}\"\n\n[events]\nsink = \"file:{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        events.display()
    );
    if let Some(app) = inbound_app {
        cfg += &format!("\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:{app}\"\n");
    }
    for (server, port) in outbound {
        cfg += &format!(
            "\n[[outbound]]\nlisten = \"127.0.0.1:0\"\nconnect = \"127.0.0.1:{port}\"\nserver = \"spiffe://{TD}/ns/{server}\"\n"
        );
    }
    let cfg_path = dir.join(format!("{name}.sidecar.toml"));
    fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
    children.spawn(
        &format!("{name}'s sidecar"),
        Command::new(proxy).args(["run", "--config"]).arg(&cfg_path).stdout(Stdio::null()),
        &dir.join(format!("{name}.stderr.log")),
    )?;
    let mut sidecar = Sidecar { name, events, ports: HashMap::new() };
    let started = wait_up(children, &sidecar.events, "proxy.started").map_err(|e| {
        e.unwrap_or_else(|| format!("{name}'s sidecar did not start (see {})", cfg_path.display()))
    })?;
    for pair in started["detail"].as_str().unwrap_or_default().split(' ') {
        if let Some((k, addr)) = pair.split_once('=') {
            if let Some(port) = addr.rsplit(':').next().and_then(|p| p.parse().ok()) {
                sidecar.ports.insert(k.to_owned(), port);
            }
        }
    }
    Ok(sidecar)
}

fn read_events(path: &Path) -> Vec<serde_json::Value> {
    let Ok(f) = fs::File::open(path) else { return Vec::new() };
    BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
}

/// Polls an events file for an event after the first `skip` that satisfies `pred`.
fn wait_event(
    path: &Path,
    skip: usize,
    pred: impl Fn(&serde_json::Value) -> bool,
    limit: Duration,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = read_events(path).into_iter().skip(skip).find(&pred) {
            return Some(e);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits for a just-started child's `event`, giving up at once with the child's own error if
/// it exits first (`Err(Some(..))`), or after a while (`Err(None)`).
fn wait_up(children: &Children, events: &Path, event: &str) -> Result<serde_json::Value, Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = read_events(events).into_iter().find(|e| e["event"] == event) {
            return Ok(e);
        }
        if let Some(died) = children.died() {
            return Err(Some(died));
        }
        if Instant::now() > deadline {
            return Err(None);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The lines of a sidecar's `/metrics` that start with `name`.
fn metric_lines(admin_port: u16, name: &str) -> Vec<String> {
    let raw = b"GET /metrics HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n";
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin_port)) else { return Vec::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.take(1024 * 1024).read_to_end(&mut out);
    String::from_utf8_lossy(&out).lines().filter(|l| l.starts_with(name)).map(str::to_owned).collect()
}

/// Sends one HTTP request to a local port and returns the first line of the answer.
fn call(port: u16, raw: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return "connection refused".into() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned();
    match text.lines().next() {
        Some(l) if l.starts_with("HTTP/1.1 200") => format!("200 OK \"{body}\""),
        Some(l) if l.starts_with("HTTP/") => l.to_owned(),
        Some(_) => "refused: TLS alert, not HTTP".into(),
        _ => "closed by the sidecar".into(),
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n";

struct Row {
    caller: &'static str,
    callee: &'static str,
    result: String,
    why: String,
}

/// Runs the demo; every child is stopped when `group` drops, on return or unwinding.
fn demo(dir: &Path, keep: bool, group: Group) -> Result<(), String> {
    let children = &group.0;
    let ca_bin = binary("mesh-ca")?;
    let proxy = binary("mesh-proxy")?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("zt-mesh demo in {}\n", dir.display());

    // The CA: keys encrypted with a passphrase that only this run knows.
    let pass: String = format!("demo-{}-{:?}", std::process::id(), Instant::now());
    let ca_dir = dir.join("ca");
    let ca = |args: &[&str]| {
        run(Command::new(&ca_bin).args(args).env("MESH_CA_PASSPHRASE", &pass))
            .map_err(|e| format!("mesh-ca {}: {}", args[0], e.trim_start_matches("mesh-ca: error: ")))
    };
    // Always a new CA: one left by an earlier run is encrypted with that run's passphrase,
    // so mesh-ca's own refusal is shown, with why.
    ca(&["init", "--dir", &ca_dir.to_string_lossy(), "--trust-domain", TD]).map_err(|e| {
        if ca_dir.exists() {
            format!(
                "{e}; {} is from an earlier run, whose CA keys are encrypted with that run's passphrase: remove it or choose a new --dir",
                dir.display()
            )
        } else {
            e
        }
    })?;
    println!("1. CA        created trust domain {TD} (root + intermediate, encrypted keys)");

    // The CA server: sidecars enroll with it and renew through it.
    let ca_log = dir.join("ca.events.jsonl");
    children.spawn(
        "mesh-ca serve",
        Command::new(&ca_bin)
            .args([
                "serve",
                "--dir",
                &ca_dir.to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
                "--cert-ttl",
                "1h",
            ])
            .env("MESH_CA_PASSPHRASE", &pass)
            .stdout(fs::File::create(&ca_log).map_err(|e| format!("{}: {e}", ca_log.display()))?),
        &dir.join("ca.stderr.log"),
    )?;
    let started = wait_up(children, &ca_log, "ca.started")
        .map_err(|e| e.unwrap_or_else(|| "mesh-ca serve did not start".into()))?;
    let ca_port: u16 = started["listen"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or("mesh-ca serve did not say where it listens")?;
    fs::write(dir.join("ca-bundle.pem"), ca(&["bundle", "--dir", &ca_dir.to_string_lossy()])?)
        .map_err(|e| e.to_string())?;
    println!("2. CA server mesh-ca serve on 127.0.0.1:{ca_port}: enrollment, renewal, revocations");
    fs::create_dir_all(dir.join("tokens")).map_err(|e| e.to_string())?;
    for (name, zone, workload) in [
        ("web", "frontend", "web"),
        ("api", "orders", "api"),
        ("charge", "payments", "charge"),
        ("rogue", "frontend", "rogue"),
    ] {
        let token = ca(&[
            "token",
            "create",
            "--dir",
            &ca_dir.to_string_lossy(),
            "--zone",
            zone,
            "--workload",
            workload,
        ])?;
        let path = dir.join("tokens").join(name);
        fs::write(&path, token).map_err(|e| e.to_string())?;
        let _ = fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    }
    println!("3. tokens    one-time join tokens for web (frontend), api (orders), charge (payments), rogue (frontend)");
    fs::write(dir.join("policy.toml"), POLICY).map_err(|e| e.to_string())?;
    fs::write(dir.join("rogue-policy.toml"), ROGUE_POLICY).map_err(|e| e.to_string())?;
    println!("4. policy    frontend -> orders; orders/api -> payments/charge; deny frontend/rogue -> orders");

    let charge = start_sidecar(
        children,
        &proxy,
        dir,
        ca_port,
        "charge",
        "policy.toml",
        Some(sample_app("payments/charge")?),
        &[],
    )?;
    let charge_in = charge.ports["inbound"];
    let api = start_sidecar(
        children,
        &proxy,
        dir,
        ca_port,
        "api",
        "policy.toml",
        Some(sample_app("orders/api")?),
        &[("payments/sa/charge", charge_in)],
    )?;
    let api_in = api.ports["inbound"];
    // web's third outbound expects orders/api but is pointed at the payments sidecar, as a
    // hijacked DNS name would do.
    let web = start_sidecar(
        children,
        &proxy,
        dir,
        ca_port,
        "web",
        "policy.toml",
        Some(sample_app("frontend/web")?),
        &[("orders/sa/api", api_in), ("payments/sa/charge", charge_in), ("orders/sa/api", charge_in)],
    )?;
    let rogue = start_sidecar(
        children,
        &proxy,
        dir,
        ca_port,
        "rogue",
        "rogue-policy.toml",
        None,
        &[("payments/sa/charge", charge_in), ("orders/sa/api", api_in)],
    )?;
    println!(
        "5. sidecars  4 mesh-proxy processes, enrolled with their tokens (keys only in memory, 1h certificates\n              renewed at half-life), mutual TLS between them, events in {}/*.events.jsonl\n",
        dir.display()
    );

    let mut rows = Vec::new();
    let mut explain = Vec::new();
    let mut scenario =
        |caller: &'static str, callee: &'static str, port: u16, raw: &[u8], watch: &[&Sidecar]| {
            let marks: Vec<usize> = watch.iter().map(|s| read_events(&s.events).len()).collect();
            let result = call(port, raw);
            let mut why = String::from("-");
            for (s, mark) in watch.iter().zip(marks) {
                let interesting = |e: &serde_json::Value| {
                    matches!(e["event"].as_str(), Some("policy.deny" | "tls.handshake_failed" | "connection"))
                };
                if let Some(e) = wait_event(&s.events, mark, interesting, Duration::from_secs(3)) {
                    let event = e["event"].as_str().unwrap_or_default();
                    if event == "connection" {
                        let rule =
                            e["rule"].as_str().unwrap_or("?").replace(&format!("{}/", dir.display()), "");
                        why = format!("{}'s sidecar: allowed by {rule}", s.name);
                        continue;
                    }
                    why =
                        format!("{}'s sidecar: {} ({})", s.name, event, e["reason"].as_str().unwrap_or("?"));
                    explain.push(e);
                    break;
                }
            }
            rows.push(Row { caller, callee, result, why });
        };
    scenario("frontend/web", "orders/api", web.ports["outbound[0]"], GET, &[&web]);
    scenario("orders/api", "payments/charge", api.ports["outbound[0]"], GET, &[&api]);
    scenario("frontend/web", "payments/charge", web.ports["outbound[1]"], GET, &[&web]);
    scenario("frontend/rogue", "payments/charge", rogue.ports["outbound[0]"], GET, &[&charge, &rogue]);
    scenario("frontend/rogue", "orders/api", rogue.ports["outbound[1]"], GET, &[&api, &rogue]);
    scenario("frontend/web", "orders/api (spoofed addr)", web.ports["outbound[2]"], GET, &[&web]);
    scenario("no certificate", "payments/charge", charge_in, GET, &[&charge]);

    println!("{:<16}  {:<28}  {:<36}  DECIDED BY", "CALLER", "CALLEE", "RESULT");
    for r in &rows {
        println!("{:<16}  {:<28}  {:<36}  {}", r.caller, r.callee, r.result, r.why);
    }
    println!("\nThe events behind each refusal:");
    for e in &explain {
        println!("  {e}");
    }
    // Every series is there from the start, at zero: the ones these calls moved.
    println!("\nweb's sidecar counted its decisions (http://127.0.0.1:{}/metrics):", web.ports["admin"]);
    for line in metric_lines(web.ports["admin"], "mesh_policy_decisions_total{") {
        if !line.ends_with(" 0") {
            println!("  {line}");
        }
    }
    if let Some(died) = children.died() {
        return Err(died);
    }
    if keep {
        println!("\nThe mesh keeps running (Ctrl-C stops it). Try:");
        println!(
            "  curl http://127.0.0.1:{}/     # frontend/web -> orders/api, allowed",
            web.ports["outbound[0]"]
        );
        println!(
            "  curl http://127.0.0.1:{}/     # frontend/web -> payments/charge, refused",
            web.ports["outbound[1]"]
        );
        println!("  tail -f {}/*.events.jsonl", dir.display());
        println!("  edit {}/policy.toml: sidecars reload it within a second", dir.display());
        for s in [&web, &api, &charge, &rogue] {
            println!(
                "  curl http://127.0.0.1:{}/metrics     # {}'s sidecar (also /live, /ready, /identity, /config)",
                s.ports["admin"], s.name
            );
        }
        if let Some(g) = children.group_id() {
            println!("Its processes are process group {g}: if the demo is killed with -9, `kill -- -{g}` stops them.");
        }
        // The watcher thread ends the process on SIGTERM, Ctrl-C or a child's exit.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    drop(group);
    println!("\nStopped the sidecars. Run with --keep to explore the running mesh.");
    Ok(())
}
