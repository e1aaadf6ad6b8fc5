//! Test support for the monitoring tests: sidecars with an admin listener and extra event
//! sinks, `/metrics` scraped and parsed by Prometheus's own Python client
//! (`prometheus_client.parser`), plain HTTP requests to the admin endpoints, a real rsyslog
//! (Debian's `rsyslogd`, foreground, listening on kernel-chosen loopback ports for UDP and
//! TCP and writing what it parsed as JSON lines), and a local HTTPS collector (Python
//! `http.server` + `ssl`, certificate made by `openssl`) that can be killed and restarted.
//!
//! Nothing here waits by sleeping: every wait polls a file, a socket table or a scrape with a
//! deadline ([`DEADLINE`]). Every address is 127.0.0.1, every port is chosen by the kernel.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proxy::{Mesh, Sidecar, SidecarSpec, DEADLINE};
use crate::{py_script, Cmd};

/// Writes `spec`'s sidecar.toml plus `extra` (TOML tables: `[admin]`, `[events]`) and starts it.
pub fn sidecar_with(mesh: &Mesh, spec: SidecarSpec<'_>, extra: &str) -> Sidecar {
    let config = mesh.write_config(&spec);
    let mut text = std::fs::read_to_string(&config).expect("reading the sidecar.toml just written");
    text.push('\n');
    text.push_str(extra);
    std::fs::write(&config, text).expect("writing sidecar.toml");
    Sidecar::start(spec.name, &config)
}

/// `[admin]` on a kernel-chosen loopback port.
pub const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// The admin address a sidecar announced in `proxy.started`.
pub fn admin_addr(sc: &Sidecar) -> SocketAddr {
    crate::ca_server::admin_addr(sc)
}

/// Polls `f` until it returns `Some`, for at most `limit`; panics with `what` otherwise.
#[track_caller]
pub fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        // Backing off between polls of something another process will produce.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// One HTTP answer from the admin listener.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Sends `raw` (a whole HTTP/1.1 request) and reads the answer until the server closes;
/// `None` if the connection ended without an answer.
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> Option<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    s.set_write_timeout(Some(DEADLINE)).ok()?;
    let _ = s.write_all(raw);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Answer { status, headers, body: body.to_owned() })
}

/// `METHOD PATH` with `Connection: close`.
#[track_caller]
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    http_raw(addr, req.as_bytes()).unwrap_or_else(|| panic!("{method} {path} on {addr}: no answer"))
}

/// One parsed sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape of `/metrics`, as `prometheus_client.parser` read it.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub content_type: String,
    /// Family name -> (type, help).
    pub families: BTreeMap<String, (String, String)>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include every pair of `labels`
    /// (0 when there is none: a counter that never moved is absent).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every value label `label` takes among samples named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The type the exposition declares for `family` (`counter`, `gauge`, `histogram`).
    pub fn type_of(&self, family: &str) -> Option<&str> {
        self.families.get(family).map(|(t, _)| t.as_str())
    }
}

/// Scrapes `http://ADDR/metrics` with Prometheus's Python client parser.
#[track_caller]
pub fn scrape(admin: SocketAddr) -> Scrape {
    let o = Cmd::new("python3").arg(py_script("prom_scrape.py")).arg(format!("http://{admin}/metrics")).run();
    assert!(o.success(), "the Prometheus parser refused /metrics:\n{o}");
    let v: Value =
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("scraper output ({e}):\n{o}"));
    let mut families = BTreeMap::new();
    let mut samples = Vec::new();
    for f in v["families"].as_array().into_iter().flatten() {
        let name = f["name"].as_str().unwrap_or_default().to_owned();
        let kind = f["type"].as_str().unwrap_or_default().to_owned();
        families.insert(name, (kind, f["help"].as_str().unwrap_or_default().to_owned()));
        for s in f["samples"].as_array().into_iter().flatten() {
            let labels = s["labels"]
                .as_object()
                .map(|m| {
                    m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                })
                .unwrap_or_default();
            let value = match &s["value"] {
                Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                Value::String(t) if t == "+Inf" => f64::INFINITY,
                _ => f64::NAN,
            };
            samples.push(Sample { name: s["name"].as_str().unwrap_or_default().to_owned(), labels, value });
        }
    }
    Scrape { content_type: v["content_type"].as_str().unwrap_or_default().to_owned(), families, samples }
}

/// Reads a file of JSON lines (missing: none yet); lines that do not parse are kept as strings.
pub fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_owned())))
        .collect()
}

/// A child process killed (and reaped) on drop.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Debian's rsyslogd in the foreground: UDP and TCP inputs on 127.0.0.1, kernel-chosen
/// ports, everything it parses written to `out` as one JSON object per message with the
/// RFC 5424 fields as rsyslog understood them.
pub struct Rsyslog {
    /// Kept for its `Drop`: rsyslogd is killed with the test.
    _proc: Proc,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub out: PathBuf,
}

impl Rsyslog {
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("the rsyslog directory");
        let (out, port_file, conf) = (dir.join("out.jsonl"), dir.join("tcp.port"), dir.join("rsyslog.conf"));
        let q = |p: &Path| p.display().to_string();
        let text = format!(
            r#"global(workDirectory="{dir}" net.enableDNS="off" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
template(name="fields" type="list" option.jsonf="on") {{
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="facility_text" name="syslogfacility-text" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}}
input(type="imudp" address="127.0.0.1" port="0")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{port_file}")
action(type="omfile" file="{out}" template="fields")
"#,
            dir = q(dir),
            port_file = q(&port_file),
            out = q(&out),
        );
        std::fs::write(&conf, text).expect("writing rsyslog.conf");
        let proc = start_rsyslogd(&conf, dir);
        let tcp_port: u16 = poll("rsyslog's TCP port file", DEADLINE, || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
        });
        let udp_port = poll("rsyslog's UDP socket", DEADLINE, || udp_port_of(proc.pid()));
        Self {
            _proc: proc,
            udp: SocketAddr::from(([127, 0, 0, 1], udp_port)),
            tcp: SocketAddr::from(([127, 0, 0, 1], tcp_port)),
            out,
        }
    }

    /// What rsyslog wrote so far.
    pub fn records(&self) -> Vec<Value> {
        json_lines(&self.out)
    }
}

/// Debian's rsyslogd (with rsyslog-gnutls) receiving syslog over TLS (RFC 5425) on a
/// kernel-chosen loopback port, with `cert`/`key` (see [`local_server_cert`]); what it parsed
/// is written to `out` like [`Rsyslog`]'s, plus `sd`: the structured data as rsyslog's
/// `mmpstrucdata` parsed it (a JSON text: SD-ID -> param -> unescaped value).
pub struct RsyslogTls {
    _proc: Proc,
    pub addr: SocketAddr,
    pub out: PathBuf,
}

impl RsyslogTls {
    pub fn start(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("the rsyslog directory");
        let (out, port_file, conf) = (dir.join("out.jsonl"), dir.join("tls.port"), dir.join("rsyslog.conf"));
        let q = |p: &Path| p.display().to_string();
        let text = format!(
            r#"global(workDirectory="{dir}" net.enableDNS="off" maxMessageSize="64k"
  DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
module(load="mmpstrucdata")
template(name="fields" type="list" option.jsonf="on") {{
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="sd" name="$!rfc5424-sd" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}}
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{port_file}")
action(type="mmpstrucdata")
action(type="omfile" file="{out}" template="fields")
"#,
            dir = q(dir),
            ca = q(ca),
            cert = q(cert),
            key = q(key),
            port_file = q(&port_file),
            out = q(&out),
        );
        std::fs::write(&conf, text).expect("writing rsyslog.conf");
        let proc = start_rsyslogd(&conf, dir);
        let port: u16 = poll("rsyslog's TLS port file (is rsyslog-gnutls installed?)", DEADLINE, || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
        });
        Self { _proc: proc, addr: SocketAddr::from(([127, 0, 0, 1], port)), out }
    }

    /// What rsyslog wrote so far.
    pub fn records(&self) -> Vec<Value> {
        json_lines(&self.out)
    }
}

/// The local port of the UDP socket process `pid` holds (from /proc: its socket inodes, and
/// the kernel's UDP table), so rsyslog can bind port 0 and the test still finds it.
fn udp_port_of(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (local, inode) = (cols.get(1)?, cols.get(9)?);
        if !inodes.iter().any(|i| i == inode) {
            return None;
        }
        u16::from_str_radix(local.split_once(':')?.1, 16).ok()
    })
}

/// A local HTTPS collector (tests/py/collector.py) with a certificate for IP 127.0.0.1 from
/// a throwaway CA made by `openssl`; `ca` is what the sidecar's `[events] ca_bundle` names.
pub struct Collector {
    proc: Proc,
    pub addr: SocketAddr,
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pub out: PathBuf,
    /// `HTTP/1.1` or `HTTP/1.0`: what the collector answers with.
    protocol: &'static str,
}

/// A certificate for IP 127.0.0.1 (and DNS `localhost`) from a throwaway CA made by
/// `openssl`, for local TLS receivers: (CA, certificate, key).
pub fn local_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("the certificate directory");
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, csr, ext) =
        (dir.join("cert.pem"), dir.join("key.pem"), dir.join("req.csr"), dir.join("ext.cnf"));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-days", "2", "-subj", "/CN=zt-mesh test receiver CA", "-keyout"]);
    Cmd::new("openssl").args(&args).arg(&ca_key).arg("-out").arg(&ca).run().assert_ok();
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-subj", "/CN=receiver", "-keyout"]);
    Cmd::new("openssl").args(&args).arg(&key).arg("-out").arg(&csr).run().assert_ok();
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("writing the extensions file");
    Cmd::new("openssl")
        .args(["x509", "-req", "-days", "2", "-set_serial", "7", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert)
        .run()
        .assert_ok();
    (ca, cert, key)
}

impl Collector {
    pub fn start(dir: &Path) -> Self {
        Self::start_speaking(dir, "HTTP/1.1")
    }

    /// A collector answering in `protocol` (`HTTP/1.0`: one request per connection, closed
    /// after the answer).
    pub fn start_speaking(dir: &Path, protocol: &'static str) -> Self {
        std::fs::create_dir_all(dir).expect("the collector directory");
        let (ca, cert, key) = local_server_cert(dir);
        let out = dir.join("received.jsonl");
        let (proc, addr) = spawn_collector(&cert, &key, &out, 0, protocol);
        Self { proc, addr, ca, cert, key, out, protocol }
    }

    /// `https://127.0.0.1:PORT/ingest`.
    pub fn url(&self) -> String {
        format!("https://{}/ingest", self.addr)
    }

    /// SIGKILL: the collector dies mid-whatever, as a crashed SIEM endpoint would.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port (the sidecar's configured URL).
    pub fn restart(&mut self) {
        self.proc.kill();
        let (proc, addr) = spawn_collector(&self.cert, &self.key, &self.out, self.addr.port(), self.protocol);
        assert_eq!(addr, self.addr);
        self.proc = proc;
    }

    /// Every record received so far: `{"content_type", "path", "auth", "request", "event"}`.
    pub fn received(&self) -> Vec<Value> {
        json_lines(&self.out)
    }
}

fn spawn_collector(cert: &Path, key: &Path, out: &Path, port: u16, protocol: &str) -> (Proc, SocketAddr) {
    let mut child = Command::new("python3")
        .arg(py_script("collector.py"))
        .arg(cert)
        .arg(key)
        .arg(out)
        .arg(port.to_string())
        .arg(protocol)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 can be started");
    let stdout = child.stdout.take().expect("stdout is piped");
    let proc = Proc(Some(child));
    // The first line is the port; it is printed once the socket listens. A collector that
    // dies (say the port was taken) closes stdout, which ends the read.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
    let got: u16 = line.trim().parse().unwrap_or_else(|_| panic!("the collector did not start: {line:?}"));
    (proc, SocketAddr::from(([127, 0, 0, 1], got)))
}

/// Starts `rsyslogd -n` on `conf` in the foreground (its pid file in `dir`), without a
/// terminal; stopped when the returned `Proc` drops.
fn start_rsyslogd(conf: &Path, dir: &Path) -> Proc {
    // Debian puts it in /usr/sbin, which a non-login PATH may lack.
    let program = if Path::new("/usr/sbin/rsyslogd").exists() { "/usr/sbin/rsyslogd" } else { "rsyslogd" };
    let child = Command::new(program)
        .args(["-n", "-f"])
        .arg(conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsyslogd can be started (scripts/test installs rsyslog and rsyslog-gnutls)");
    Proc(Some(child))
}
