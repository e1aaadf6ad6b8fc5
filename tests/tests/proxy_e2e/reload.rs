//! Hot reload while the sidecars run: policy files (polled, and forced by SIGHUP), a broken
//! policy keeping the last good one, a certificate rotated on disk under an open
//! connection, and a policy load that waits without stalling a one-worker sidecar.

use std::fs::{File, FileTimes};
use std::path::{Path, PathBuf};

use super::*;

const DENY_ALL: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders"]
"#;

/// Refers to a zone the file does not declare: must be refused as a whole.
const BROKEN: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders"]

[[allow]]
from = "frontend"
to = "nowhere"
"#;

/// One exchange through the client sidecar: true if the bytes came back.
fn passes(p: &Pair, text: &str) -> bool {
    exchange(p.client.outbound[0], text.as_bytes()) == text.as_bytes()
}

/// Rewrites `path` in place with `text` of the same length and puts the old modification
/// time back, so that polling cannot see the change: only SIGHUP can.
fn rewrite_unnoticeably(path: &Path, text: &str) {
    let meta = std::fs::metadata(path).expect("the policy file exists");
    assert_eq!(meta.len(), text.len() as u64, "the replacement must keep the size");
    let modified = meta.modified().expect("mtime");
    std::fs::write(path, text).expect("rewriting the policy in place");
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(modified)))
        .expect("restoring the modification time");
}

/// A [`Pair`] whose sidecars follow policy files of their own, so that one side's file can
/// change alone: the server's holds `server_policy` (missing if `None`), the client's allows
/// frontend -> orders. `server_workers` sets the server's TOKIO_WORKER_THREADS. Returns the
/// pair and the paths of the server's and the client's policy.
fn split_pair(server_policy: Option<&str>, server_workers: Option<usize>) -> (Pair, PathBuf, PathBuf) {
    let mut spec = Pair::with_policy(SAMPLE_POLICY).server_policy(server_policy);
    if let Some(n) = server_workers {
        spec = spec.server_workers(n);
    }
    let p = spec.start();
    let (server, client) = (p.server_policy.clone(), p.client_policy.clone());
    (p, server, client)
}

#[test]
fn policy_changes_apply_to_new_connections_and_broken_ones_are_refused() {
    // The server starts without its policy file: deny everything.
    let (p, server_policy, client_policy) = split_pair(None, None);

    // 1. Missing policy: the server refuses after the handshake; the app sees nothing.
    let mark = p.server.mark();
    assert!(!passes(&p, "no policy yet"));
    let e = p.server.next_conn_event(mark);
    assert_fields(&p.server, &e, &[("event", "policy.deny"), ("reason", "no_rule"), ("src_id", &p.web.id)]);
    assert_eq!(p.app.connections(), 0);

    // 2. The policy appears (picked up by polling): new connections pass.
    let mark = p.server.mark();
    p.mesh.write_file("server-policy.toml", SAMPLE_POLICY);
    p.server.next_named(mark, "policy.reloaded");
    assert!(passes(&p, "allowed now"), "{}", p.server.transcript());
    assert_eq!(p.app.connections(), 1);

    // 3. A broken policy is refused and the last good one stays.
    let mark = p.server.mark();
    p.mesh.write_file("server-policy.toml", BROKEN);
    let e = p.server.next_named(mark, "policy.reload_failed");
    assert!(
        p.server.events()[mark..].iter().all(|e| e["event"] != "policy.reloaded"),
        "a broken policy was loaded\n{}",
        p.server.transcript()
    );
    assert!(e.to_string().contains("server-policy.toml"), "the failure names the file: {e}");
    assert!(passes(&p, "still allowed"), "{}", p.server.transcript());
    assert_eq!(p.app.connections(), 2);

    // 4. SIGHUP forces a reload that polling cannot notice: the client's own policy flips
    //    `[[allow]]` to `[[deny]] ` (same size, same mtime), so its egress is now refused.
    let flipped = SAMPLE_POLICY.replace("[[allow]]", "[[deny]] ");
    rewrite_unnoticeably(&client_policy, &flipped);
    let mark = p.client.mark();
    p.client.signal("HUP");
    p.client.next_named(mark, "policy.reloaded");
    let mark = p.client.mark();
    assert!(!passes(&p, "egress denied"));
    let e = p.client.next_conn_event(mark);
    assert_fields(
        &p.client,
        &e,
        &[("event", "policy.deny"), ("direction", "outbound"), ("reason", "deny_rule")],
    );
    assert_eq!(p.app.connections(), 2, "a denied egress reached the app");

    // 5. And back, by polling.
    let mark = p.client.mark();
    p.mesh.write_file("client-policy.toml", SAMPLE_POLICY);
    p.client.next_named(mark, "policy.reloaded");
    assert!(passes(&p, "allowed again"), "{}", p.client.transcript());
    assert_eq!(p.app.connections(), 3);

    // 6. A valid policy without the rule, then the file removed: both deny at the server.
    for step in ["deny-all policy", "policy removed"] {
        let mark = p.server.mark();
        if step == "policy removed" {
            std::fs::remove_file(&server_policy).expect("removing the policy");
        } else {
            p.mesh.write_file("server-policy.toml", DENY_ALL);
        }
        p.server.next_named(mark, "policy.reloaded");
        let mark = p.server.mark();
        assert!(!passes(&p, step), "{step}: still allowed");
        let e = p.server.next_conn_event(mark);
        assert_fields(&p.server, &e, &[("event", "policy.deny"), ("reason", "no_rule")]);
        assert_eq!(p.app.connections(), 3, "{step}: the app was reached");
    }
}

#[test]
fn certificate_rotation_keeps_open_connections_and_serves_the_new_certificate() {
    let p = Pair::with_policy(SAMPLE_POLICY).start();
    let inbound = p.server.inbound.expect("inbound port");
    let presented = || {
        let r = Probe::to(inbound).identity(&p.web).verify(&p.api.bundle()).send("who").run();
        assert_eq!(field(&r, "received"), "who", "{r}\n{}", p.server.transcript());
        assert_eq!(r["peer_uris"][0], p.api.id.as_str(), "{r}");
        norm_serial(field(&r, "peer_serial"))
    };
    assert_eq!(presented(), p.api.serial, "the server presents its issued certificate");

    let mut long = Client::connect(p.client.outbound[0]);
    assert_eq!(long.roundtrip(b"before rotation"), b"before rotation");

    let mark = p.server.mark();
    let new = p.mesh.reissue(&p.api);
    assert_ne!(new.serial, p.api.serial);
    p.server.next_named(mark, "cert.rotated");
    // cert.pem, key.pem and bundle.pem change one after another, so the first reload may
    // still see the old pair: probe again after each further cert.rotated, until the new
    // serial is presented (each wait is bounded; only a rotation can change the answer).
    let rotations = || p.server.events()[mark..].iter().filter(|e| e["event"] == "cert.rotated").count();
    loop {
        let seen = rotations();
        if presented() == new.serial {
            break;
        }
        p.server.wait_until("a cert.rotated that presents the new serial", |events| {
            (events[mark..].iter().filter(|e| e["event"] == "cert.rotated").count() > seen).then_some(())
        });
    }

    // The connection opened before the rotation is still open and working.
    assert_eq!(long.roundtrip(b"after rotation"), b"after rotation");
    // New connections through the client sidecar (which verifies the new certificate) work.
    assert_eq!(exchange(p.client.outbound[0], b"new connection"), b"new connection");
    let (rest, clean) = long.finish();
    assert!(rest.is_empty() && clean, "the long connection ended badly: {rest:?}");
    let n = (b"before rotation".len() + b"after rotation".len()) as u64;
    let e = p.server.wait_for("the long connection's event", |e| {
        e["event"] == "connection" && e["bytes_in"].as_u64() == Some(n)
    });
    assert_fields(&p.server, &e, &[("reason", "closed"), ("src_id", &p.web.id)]);
}

/// Opens `fifo` for writing without blocking, retrying until a reader has it open: before
/// that the kernel answers ENXIO. Bounded by [`DEADLINE`].
fn writer_once_read(fifo: &Path, server: &Sidecar) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000; // Linux, x86_64 and aarch64
    const ENXIO: i32 = 6;
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        match File::options().write(true).custom_flags(O_NONBLOCK).open(fifo) {
            Ok(f) => return f,
            Err(e) if e.raw_os_error() == Some(ENXIO) && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("the sidecar never opened the policy FIFO ({e})\n{}", server.transcript()),
        }
    }
}

/// A policy load that waits (a FIFO with no writer yet, as a hung network mount would) must
/// not stall the data plane, even on a one-worker sidecar whose only thread runs every
/// connection: loads run on the blocking pool.
#[test]
fn a_policy_load_that_waits_stalls_no_connection_on_a_one_worker_sidecar() {
    use std::io::Write;
    let (p, server_policy, _) = split_pair(Some(SAMPLE_POLICY), Some(1));
    assert!(passes(&p, "before"), "{}", p.server.transcript());

    // The FIFO goes in under the policy's name (it keeps a second name, for the writer).
    let fifo = p.mesh.path("policy.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    let staged = p.mesh.path("server-policy.staged");
    std::fs::hard_link(&fifo, &staged).expect("a second name for the FIFO");
    std::fs::rename(&staged, &server_policy).expect("the FIFO replaces the policy file");
    let mark = p.server.mark();
    p.server.signal("HUP");
    // Once a non-blocking writer gets in, the sidecar's loader has the FIFO open and sits in
    // read() until the policy text arrives.
    let mut writer = writer_once_read(&fifo, &p.server);

    // Meanwhile the only worker serves connections.
    assert!(passes(&p, "while the policy load waits"), "{}", p.server.transcript());

    // A regular file goes back under the name first (the loader reads through the fd it
    // holds), so no later poll opens the FIFO again; then the text arrives and the load ends.
    std::fs::write(&staged, SAMPLE_POLICY).expect("staging a regular policy file");
    std::fs::rename(&staged, &server_policy).expect("the regular file replaces the FIFO");
    writer.write_all(SAMPLE_POLICY.as_bytes()).expect("writing the policy into the FIFO");
    drop(writer);
    let e = p.server.next_named(mark, "policy.reloaded");
    assert_fields(&p.server, &e, &[("severity", "info")]);
    assert!(passes(&p, "after"), "{}", p.server.transcript());
}

/// `SAMPLE_POLICY` plus a deny rule for `from -> to`.
fn with_deny(from: &str, to: &str) -> String {
    format!("{SAMPLE_POLICY}\n[[deny]]\nfrom = \"{from}\"\nto = \"{to}\"\n")
}

/// The `connection` event of the connection from `src_id` to `dst_id`, printed at or after
/// `mark`.
#[track_caller]
fn connection_event(sc: &Sidecar, mark: usize, src_id: &str, dst_id: &str) -> Value {
    sc.wait_from(mark, "the connection's event", |e| {
        e["event"] == "connection" && e["src_id"] == src_id && e["dst_id"] == dst_id
    })
}

/// A policy reload re-decides every open connection: each side closes, on its own, the ones
/// its new policy denies (one `connection` event each, reason `policy_revoked`, naming the
/// new deciding rule), and every connection it still allows goes on.
///
/// Two servers (`orders/api`, `orders/db`) follow one policy file; two clients follow one
/// each: `frontend/web` (outbounds to api and db) and `frontend/admin` (to api).
#[test]
fn a_policy_reload_closes_the_open_connections_it_now_denies_on_each_side() {
    let mesh = Mesh::new();
    let (api, db) = (mesh.identity("orders", "api"), mesh.identity("orders", "db"));
    let (web, admin) = (mesh.identity("frontend", "web"), mesh.identity("frontend", "admin"));
    let app = App::start();
    let servers_policy = mesh.write_file("servers-policy.toml", SAMPLE_POLICY);
    let web_policy = mesh.write_file("web-policy.toml", SAMPLE_POLICY);
    let admin_policy = mesh.write_file("admin-policy.toml", SAMPLE_POLICY);
    let s_api = mesh.sidecar(SidecarSpec::new("api", &api, &servers_policy).inbound(app.addr));
    let s_db = mesh.sidecar(SidecarSpec::new("db", &db, &servers_policy).inbound(app.addr));
    let (api_in, db_in) = (s_api.inbound.expect("inbound"), s_db.inbound.expect("inbound"));
    let c_web = mesh.sidecar(
        SidecarSpec::new("web", &web, &web_policy).outbound(api_in, &api.id).outbound(db_in, &db.id),
    );
    let c_admin = mesh.sidecar(SidecarSpec::new("admin", &admin, &admin_policy).outbound(api_in, &api.id));

    let mut web_api = Client::connect(c_web.outbound[0]);
    let mut web_db = Client::connect(c_web.outbound[1]);
    assert_eq!(web_api.roundtrip(b"web -> api"), b"web -> api", "{}", c_web.transcript());
    assert_eq!(web_db.roundtrip(b"web -> db"), b"web -> db", "{}", c_web.transcript());

    // 1. The client's own policy now denies web -> db (the servers' still allows it): the
    //    client sidecar closes that connection itself; web -> api goes on.
    let (mark_web, mark_db) = (c_web.mark(), s_db.mark());
    mesh.write_file("web-policy.toml", &with_deny("frontend/web", "orders/db"));
    c_web.next_named(mark_web, "policy.reloaded");
    web_db.read_until_closed(DEADLINE).unwrap_or_else(|e| panic!("web -> db: {e}\n{}", c_web.transcript()));
    let e = connection_event(&c_web, mark_web, &web.id, &db.id);
    assert_fields(
        &c_web,
        &e,
        &[
            ("reason", "policy_revoked"),
            ("decision", "deny"),
            ("direction", "outbound"),
            ("severity", "warning"),
        ],
    );
    assert!(field(&e, "rule").contains("frontend/web"), "the event names the deny rule: {e}");
    let on_db = connection_event(&s_db, mark_db, &web.id, &db.id);
    assert_ne!(field(&on_db, "reason"), "policy_revoked", "the server did not decide this: {on_db}");
    assert_eq!(web_api.roundtrip(b"still allowed"), b"still allowed", "{}", c_web.transcript());
    assert_eq!(
        c_web.events()[mark_web..].iter().filter(|e| e["reason"] == "policy_revoked").count(),
        1,
        "one event per closed connection\n{}",
        c_web.transcript()
    );

    // 2. The servers' policy now denies frontend/web -> orders (the web client's still allows
    //    web -> api): the api sidecar closes web's connection; admin's goes on.
    let mut admin_api = Client::connect(c_admin.outbound[0]);
    assert_eq!(admin_api.roundtrip(b"admin -> api"), b"admin -> api", "{}", c_admin.transcript());
    let (mark_api, mark_web) = (s_api.mark(), c_web.mark());
    mesh.write_file("servers-policy.toml", &with_deny("frontend/web", "orders"));
    s_api.next_named(mark_api, "policy.reloaded");
    web_api.read_until_closed(DEADLINE).unwrap_or_else(|e| panic!("web -> api: {e}\n{}", s_api.transcript()));
    let e = connection_event(&s_api, mark_api, &web.id, &api.id);
    assert_fields(
        &s_api,
        &e,
        &[("reason", "policy_revoked"), ("decision", "deny"), ("direction", "inbound"), ("src_id", &web.id)],
    );
    assert!(field(&e, "rule").contains("frontend/web"), "the event names the deny rule: {e}");
    assert!(field(&e, "reason_detail").contains("DENY"), "{e}");
    let on_web = connection_event(&c_web, mark_web, &web.id, &api.id);
    assert_ne!(field(&on_web, "reason"), "policy_revoked", "the client did not decide this: {on_web}");
    assert_eq!(admin_api.roundtrip(b"admin still allowed"), b"admin still allowed", "{}", s_api.transcript());
    assert_eq!(
        s_api.events()[mark_api..].iter().filter(|e| e["reason"] == "policy_revoked").count(),
        1,
        "one event per closed connection\n{}",
        s_api.transcript()
    );
    // New connections follow the new policy too.
    assert_ne!(exchange(c_web.outbound[0], b"new"), b"new");
}
