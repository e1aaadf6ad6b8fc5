//! sidecar.toml: good files in both identity modes, defaults, path resolution, and one test
//! per refusal checking the line and key the error names.

use super::*;

const FULL: &str = r#"policy = "policy.toml"

[identity]
cert = "certs/cert.pem"
key = "certs/key.pem"
bundle = "/etc/mesh/bundle.pem"

[inbound]
listen = "0.0.0.0:15443"
forward = "127.0.0.1:8080"
protocol = "http"

[[outbound]]
listen = "127.0.0.1:15001"
connect = "10.0.0.7:15443"
server = "spiffe://example.org/ns/payments/sa/charge"

[[outbound]]
listen = "127.0.0.1:15002"
connect = "ledger.internal:15443"
server = "spiffe://example.org/ns/payments/sa/ledger"
protocol = "http"

[admin]
listen = "127.0.0.1:15000"

[events]
sink = ["stdout", "file:events.log", "syslog+udp://logs:514", "syslog+tcp://10.0.0.9", "https://siem.example/in"]

[limits]
handshake_timeout = "3s"
idle_timeout = "500ms"
max_connections = 64
"#;

const MINIMAL: &str = r#"policy = "policy.toml"
[identity]
ca_url = "https://ca.mesh:8443"
ca_bundle = "ca.pem"
token_file = "/run/secrets/mesh-token"
"#;

fn base() -> &'static Path {
    Path::new("/srv/app")
}

fn parse(text: &str) -> Result<SidecarConfig, ConfigError> {
    SidecarConfig::from_str_named(text, "sidecar.toml", base())
}

/// The error for `text`, as (line, key, message).
fn error(text: &str) -> (Option<usize>, Option<String>, String) {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => (e.line(), e.key().map(str::to_owned), e.to_string()),
    }
}

fn with_identity(rest: &str) -> String {
    format!("policy = \"p.toml\"\n[identity]\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n{rest}")
}

#[test]
fn full_file() {
    let c = parse(FULL).expect("valid");
    assert_eq!(c.policy, PathBuf::from("/srv/app/policy.toml"));
    assert_eq!(
        c.identity,
        IdentitySource::Files {
            cert: "/srv/app/certs/cert.pem".into(),
            key: "/srv/app/certs/key.pem".into(),
            bundle: "/etc/mesh/bundle.pem".into(),
        }
    );
    let inbound = c.inbound.as_ref().expect("inbound");
    assert_eq!(inbound.listen, "0.0.0.0:15443".parse().expect("addr"));
    assert_eq!(inbound.forward.to_string(), "127.0.0.1:8080");
    assert_eq!(inbound.protocol, Protocol::Http);
    assert_eq!(c.outbound.len(), 2);
    assert_eq!(c.outbound[0].server.to_string(), "spiffe://example.org/ns/payments/sa/charge");
    assert_eq!(c.outbound[0].protocol, Protocol::Tcp);
    assert_eq!(c.outbound[1].connect.host(), &Host::Dns("ledger.internal".into()));
    assert_eq!(c.admin, Some(Admin { listen: DEFAULT_ADMIN_LISTEN }));
    let sinks: Vec<String> = c.events.iter().map(ToString::to_string).collect();
    assert_eq!(
        sinks,
        [
            "stdout",
            "file:/srv/app/events.log",
            "syslog+udp://logs:514",
            "syslog+tcp://10.0.0.9:514",
            "https://siem.example/in"
        ]
    );
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.idle_timeout, Duration::from_millis(500));
    assert_eq!(c.limits.connect_timeout, Limits::default().connect_timeout);
    assert_eq!(c.limits.max_connections, 64);
}

#[test]
fn minimal_enrollment_file_takes_defaults() {
    let c = parse(MINIMAL).expect("valid");
    match &c.identity {
        IdentitySource::Enroll { ca_url, ca_bundle, token_file } => {
            assert_eq!(ca_url.endpoint().to_string(), "ca.mesh:8443");
            assert_eq!(ca_bundle, &PathBuf::from("/srv/app/ca.pem"));
            assert_eq!(token_file, &PathBuf::from("/run/secrets/mesh-token"));
        }
        other => panic!("expected enrollment, got {other:?}"),
    }
    assert_eq!((c.inbound, c.outbound.len(), c.admin), (None, 0, None));
    assert_eq!(c.events, [EventSink::Stdout]);
    assert_eq!(c.limits, Limits::default());
    assert!(c.tls.resumption, "resumption is on unless turned off");
    let c = parse(&format!("{MINIMAL}[admin]\n[events]\nsink = \"stderr\"\n")).expect("valid");
    assert_eq!(c.admin, Some(Admin { listen: DEFAULT_ADMIN_LISTEN }));
    assert_eq!(c.events, [EventSink::Stderr]);
}

#[test]
fn from_file_resolves_against_the_file_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("conf")).expect("mkdir");
    let path = dir.path().join("conf/sidecar.toml");
    std::fs::write(&path, MINIMAL).expect("write");
    let c = SidecarConfig::from_file(&path).expect("valid");
    assert_eq!(c.policy, dir.path().join("conf/policy.toml"));
    std::fs::write(&path, MINIMAL.replace("https://", "http://")).expect("write");
    let e = SidecarConfig::from_file(&path).expect_err("http");
    assert_eq!((e.file(), e.line()), (path.display().to_string().as_str(), Some(3)));
}

#[test]
fn unknown_keys_name_their_table() {
    let (line, key, msg) =
        error(&format!("{MINIMAL}[inbound]\nlisten = \"0.0.0.0:1\"\nforwrd = \"127.0.0.1:2\"\n"));
    assert_eq!((line, key.as_deref()), (Some(8), Some("inbound.forwrd")));
    assert!(msg.contains("unknown key `forwrd`; valid keys here: `listen`, `forward`, `protocol`"), "{msg}");
    let (line, key, _) = error(&format!("{MINIMAL}[[outbound]]\nlisten = \"127.0.0.1:1\"\nservr = \"x\"\n"));
    assert_eq!((line, key.as_deref()), (Some(8), Some("outbound[0].servr")));
}

#[test]
fn inline_secrets_are_refused_and_never_echoed() {
    let secret = "s3cr3t-t0ken";
    let (line, key, msg) =
        error(&MINIMAL.replace("token_file = ", &format!("token = \"{secret}\"\ntoken_file = ")));
    assert_eq!((line, key.as_deref()), (Some(5), Some("identity.token")));
    assert!(!msg.contains(secret), "{msg}");
    let pem = "-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\\n-----END PRIVATE KEY-----";
    let (line, key, msg) = error(&with_identity("").replace("key = \"k\"", &format!("key = \"{pem}\"")));
    assert_eq!((line, key.as_deref()), (Some(4), Some("identity.key")));
    assert!(
        msg.contains("inline keys, tokens and certificates are not accepted") && !msg.contains("MIGH"),
        "{msg}"
    );
}

#[test]
fn identity_modes_are_exclusive_and_complete() {
    let (line, key, msg) = error(&with_identity("ca_url = \"https://ca:8443\"\n"));
    assert_eq!((line, key.as_deref()), (Some(6), Some("identity.ca_url")));
    assert!(msg.contains("cannot be combined with cert, key or bundle"), "{msg}");
    let (line, key, msg) = error("policy = \"p\"\n[identity]\ncert = \"c\"\nbundle = \"b\"\n");
    assert_eq!(
        (line, key.as_deref(), msg.ends_with("files mode needs key too")),
        (Some(2), Some("identity"), true)
    );
    let (line, key, msg) = error("policy = \"p\"\n[identity]\n");
    assert_eq!((line, key.as_deref()), (Some(2), Some("identity")));
    assert!(msg.contains("is empty; give files mode (cert, key, bundle) or enrollment mode"), "{msg}");
    let (line, key, msg) = error("policy = \"p\"\n");
    assert_eq!((line, key, msg), (Some(1), None, "sidecar.toml:1:1: missing key `identity`".to_owned()));
}

#[test]
fn ca_url_must_be_plain_https() {
    for (url, why) in [
        ("http://ca:8443", "must start with https://"),
        ("https://user:pw@ca:8443", "credentials belong in files"),
        ("https://ca:99999", "port must be a number"),
    ] {
        let (line, key, msg) = error(&MINIMAL.replace("https://ca.mesh:8443", url));
        assert_eq!((line, key.as_deref()), (Some(3), Some("identity.ca_url")), "{url}");
        assert!(msg.contains(why), "{msg}");
    }
}

#[test]
fn addresses_and_protocols_are_checked() {
    let inbound = |listen: &str, forward: &str, protocol: &str| {
        error(&with_identity(&format!(
            "[inbound]\nlisten = \"{listen}\"\nforward = \"{forward}\"\nprotocol = \"{protocol}\"\n"
        )))
    };
    let (line, key, msg) = inbound("localhost:15443", "127.0.0.1:1", "tcp");
    assert_eq!((line, key.as_deref()), (Some(7), Some("inbound.listen")));
    assert!(msg.contains("is not a listen address"), "{msg}");
    let (line, key, msg) = inbound("0.0.0.0:1", "127.0.0.1", "tcp");
    assert_eq!((line, key.as_deref()), (Some(8), Some("inbound.forward")));
    assert!(msg.contains("it has no port"), "{msg}");
    let (line, key, msg) = inbound("0.0.0.0:1", "127.0.0.1:2", "udp");
    assert_eq!(
        (line, key.as_deref(), msg.as_str()),
        (
            Some(9),
            Some("inbound.protocol"),
            "sidecar.toml:9:12: inbound.protocol: \"udp\" is not a protocol; write \"tcp\" or \"http\""
        )
    );
    let (line, key, msg) = error(&with_identity(
        "[[outbound]]\nlisten = \"127.0.0.1:1\"\nconnect = \"h:2\"\nserver = \"spiffe://example.org/ns/payments\"\n",
    ));
    assert_eq!((line, key.as_deref()), (Some(9), Some("outbound[0].server")));
    assert!(msg.contains("is not a workload SPIFFE ID: is not of the form"), "{msg}");
}

#[test]
fn listeners_must_not_collide() {
    let out = |listen: &str| {
        format!(
            "[[outbound]]\nlisten = \"{listen}\"\nconnect = \"h:2\"\nserver = \"spiffe://td/ns/a/sa/b\"\n"
        )
    };
    let (line, key, msg) =
        error(&with_identity(&format!("{}{}", out("127.0.0.1:15001"), out("127.0.0.1:15001"))));
    assert_eq!((line, key.as_deref()), (Some(11), Some("outbound[1].listen")));
    assert!(msg.contains("127.0.0.1:15001 conflicts with outbound[0].listen (127.0.0.1:15001)"), "{msg}");
    let text = with_identity(&format!(
        "[inbound]\nlisten = \"0.0.0.0:15001\"\nforward = \"127.0.0.1:1\"\n{}",
        out("127.0.0.1:15001")
    ));
    assert_eq!(error(&text).1.as_deref(), Some("outbound[0].listen"));
    let (_, key, msg) = error(&with_identity(&format!("{}[admin]\n", out("127.0.0.1:15000"))));
    assert_eq!(key.as_deref(), Some("outbound[0].listen"));
    assert!(msg.contains("admin.listen (default)"), "{msg}");
    // Port 0 means "any free port" and distinct families do not collide.
    let ok = with_identity(&format!("{}{}{}", out("127.0.0.1:0"), out("127.0.0.1:0"), out("[::]:15001")));
    assert!(parse(&format!("{ok}{}", out("0.0.0.0:15002"))).is_ok());
}

#[test]
fn sinks_are_checked() {
    let sink = |s: &str| error(&format!("{MINIMAL}[events]\nsink = {s}\n"));
    let (line, key, msg) = sink("\"kafka://broker\"");
    assert_eq!((line, key.as_deref()), (Some(7), Some("events.sink")));
    assert!(msg.contains("is not an event sink; write \"stdout\""), "{msg}");
    let (_, key, msg) = sink("[\"stdout\", \"http://siem/in\"]");
    assert_eq!(key.as_deref(), Some("events.sink[1]"));
    assert!(msg.contains("plain http"), "{msg}");
    let (_, key, msg) = sink("[\"stdout\", \"stdout\"]");
    assert_eq!((key.as_deref(), msg.contains("listed twice")), (Some("events.sink[1]"), true));
    assert!(sink("[]").2.contains("events.sink: is empty"));
    assert!(sink("\"syslog+udp://logs:0\"").2.contains("not a usable syslog address"));
    let (_, key, msg) = sink("3");
    assert_eq!(key.as_deref(), Some("events.sink"));
    assert!(msg.contains("expected a sink string or an array of sink strings"), "{msg}");
}

#[test]
fn event_options_take_defaults_and_are_checked() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.event_options, EventOptions::default());
    assert_eq!(
        (c.event_options.queue_size, c.event_options.syslog_facility.code()),
        (8192, 16),
        "defaults: 8192 events per sink, facility local0"
    );
    let c = parse(&format!(
        "{MINIMAL}[events]\nsink = \"https://siem.example/in\"\nqueue_size = 64\nsyslog_facility = \"authpriv\"\n\
         https_format = \"json\"\nca_bundle = \"collector-ca.pem\"\n"
    ))
    .expect("valid");
    let o = &c.event_options;
    assert_eq!((o.queue_size, o.syslog_facility.name(), o.syslog_facility.code()), (64, "authpriv", 10));
    assert_eq!(
        (o.https_format, o.ca_bundle.as_deref()),
        (HttpsFormat::Json, Some(Path::new("/srv/app/collector-ca.pem")))
    );

    let option = |l: &str| error(&format!("{MINIMAL}[events]\n{l}\n"));
    let (line, key, msg) = option("queue_size = 0");
    assert_eq!((line, key.as_deref()), (Some(7), Some("events.queue_size")));
    assert!(msg.contains("must be from 1 to 1000000"), "{msg}");
    assert_eq!(option("queue_size = 1000001").1.as_deref(), Some("events.queue_size"));
    let (_, key, msg) = option("syslog_facility = \"kern\"");
    assert_eq!(key.as_deref(), Some("events.syslog_facility"));
    assert!(msg.contains("not a facility; write one of user, daemon, auth, authpriv, local0"), "{msg}");
    let (_, key, msg) = option("https_format = \"xml\"");
    assert_eq!(key.as_deref(), Some("events.https_format"));
    assert!(msg.contains("write \"ndjson\""), "{msg}");
    let (_, key, msg) = option("ca_bundle = \"-----BEGIN CERTIFICATE-----\"");
    assert_eq!((key.as_deref(), msg.contains("value not shown")), (Some("events.ca_bundle"), true));
    assert_eq!(option("batch = 5").1.as_deref(), Some("events.batch"));
}

#[test]
fn event_formats_tls_syslog_and_the_auth_header_file_are_read() {
    let c = parse(&format!(
        "{MINIMAL}[events]\nsink = [\"stdout\", \"syslog+tls://relay.example\", \"syslog+tls://10.0.0.9:6515\", \"https://hec.example:8088/services/collector/raw\"]\n\
         format = \"ocsf\"\nstdout_format = \"json\"\nauth_header_file = \"hec.header\"\n"
    ))
    .expect("valid");
    let sinks: Vec<String> = c.events.iter().map(ToString::to_string).collect();
    assert_eq!(
        sinks[1..3],
        ["syslog+tls://relay.example:6514", "syslog+tls://10.0.0.9:6515"],
        "RFC 5425's port by default"
    );
    let o = &c.event_options;
    assert_eq!((o.format, o.stdout_format), (EventFormat::Ocsf, Some(EventFormat::Json)));
    assert_eq!(o.auth_header_file.as_deref(), Some(Path::new("/srv/app/hec.header")));
    let formats: Vec<EventFormat> = c.events.iter().map(|s| o.format_of(s)).collect();
    assert_eq!(formats, [EventFormat::Json, EventFormat::Ocsf, EventFormat::Ocsf, EventFormat::Ocsf]);
    // Without stdout_format, stdout follows format too; by default everything is zt-mesh's JSON.
    let c = parse(&format!("{MINIMAL}[events]\nformat = \"ecs\"\n")).expect("valid");
    assert_eq!(c.event_options.format_of(&EventSink::Stdout), EventFormat::Ecs);
    assert_eq!(parse(MINIMAL).expect("valid").event_options.format_of(&EventSink::Stdout), EventFormat::Json);

    let option = |l: &str| error(&format!("{MINIMAL}[events]\n{l}\n"));
    let (line, key, msg) = option("format = \"cef\"");
    assert_eq!((line, key.as_deref()), (Some(7), Some("events.format")));
    assert!(msg.contains("write \"json\"") && msg.contains("\"ocsf\""), "{msg}");
    assert_eq!(option("stdout_format = \"ECS\"").1.as_deref(), Some("events.stdout_format"));
    let (_, key, msg) = option("auth_header_file = \"Authorization: Splunk\\ntoken\"");
    assert_eq!((key.as_deref(), msg.contains("value not shown")), (Some("events.auth_header_file"), true));
    assert!(!msg.contains("Splunk"), "{msg}");
}

#[test]
fn limits_are_checked() {
    let limit = |l: &str| error(&format!("{MINIMAL}[limits]\n{l}\n"));
    let (line, key, msg) = limit("idle_timeout = \"5 parsecs\"");
    assert_eq!((line, key.as_deref()), (Some(7), Some("limits.idle_timeout")));
    assert!(msg.contains("is not a duration; write it like 500ms, 10s, 5m or 1h"), "{msg}");
    assert!(limit("drain_timeout = \"0s\"").2.contains("is zero"));
    let (_, key, msg) = limit("max_connections = 0");
    assert_eq!(
        (key.as_deref(), msg.ends_with("0 must be at least 1")),
        (Some("limits.max_connections"), true)
    );
    assert_eq!(limit("max_connections = \"many\"").1.as_deref(), Some("limits.max_connections"));
    assert_eq!(limit("read_timeout = \"1s\"").1.as_deref(), Some("limits.read_timeout"));
    for key in ["max_admin_connections", "max_pending", "max_pending_per_source"] {
        let (line, k, msg) = limit(&format!("{key} = -3"));
        assert_eq!((line, k.as_deref()), (Some(7), Some(format!("limits.{key}").as_str())), "{msg}");
        assert!(msg.ends_with("-3 must be at least 1"), "{msg}");
    }
    let (_, key, msg) = limit("max_pending = 4\nmax_pending_per_source = 8");
    assert_eq!(key.as_deref(), Some("limits.max_pending_per_source"), "{msg}");
    assert!(msg.contains("make it at most max_pending"), "{msg}");
    assert_eq!(
        limit("max_pending = 4").1.as_deref(),
        Some("limits.max_pending"),
        "below the default per source"
    );
}

#[test]
fn listener_budgets_and_pending_caps_are_read_with_defaults() {
    let c = parse(MINIMAL).expect("valid");
    let d = Limits::default();
    assert_eq!(
        (
            d.handshake_timeout,
            d.max_connections,
            d.max_admin_connections,
            d.max_pending,
            d.max_pending_per_source
        ),
        (Duration::from_secs(5), 10_000, 64, 1024, 32)
    );
    assert_eq!(c.limits, d);
    let text = format!(
        "{MINIMAL}[limits]\nmax_connections = 100\nmax_admin_connections = 8\nmax_pending = 50\nmax_pending_per_source = 5\n"
    );
    let l = parse(&text).expect("valid").limits;
    assert_eq!(
        (l.max_connections, l.max_admin_connections, l.max_pending, l.max_pending_per_source),
        (100, 8, 50, 5)
    );
}

#[test]
fn tls_resumption_can_be_turned_off_and_nothing_else() {
    let c = parse(&format!("{MINIMAL}[tls]\nresumption = false\n")).expect("valid");
    assert_eq!(c.tls, TlsOptions { resumption: false });
    let (line, key, _) = error(&format!("{MINIMAL}[tls]\nresumption = \"no\"\n"));
    assert_eq!((line, key.as_deref()), (Some(7), Some("tls.resumption")));
    // Versions and suites are not a knob: TLS 1.3 only, always.
    let (_, key, msg) = error(&format!("{MINIMAL}[tls]\nmin_version = \"1.2\"\n"));
    assert_eq!(key.as_deref(), Some("tls.min_version"), "{msg}");
}

#[test]
fn paths_are_checked() {
    let (_, key, msg) = error(&MINIMAL.replace("policy.toml", ""));
    assert_eq!((key.as_deref(), msg.ends_with("is empty; write a file path")), (Some("policy"), true));
    let (_, key, msg) = error(&MINIMAL.replace("ca.pem", "~/ca.pem"));
    assert_eq!((key.as_deref(), msg.contains("not expanded")), (Some("identity.ca_bundle"), true));
}

#[test]
fn the_readmes_events_blocks_are_valid_sidecar_toml() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let section = readme
        .split("\n## Events\n")
        .nth(1)
        .and_then(|s| s.split("\n## Metrics").next())
        .expect("an Events section");
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.starts_with("[events]"))
        .collect();
    assert!(blocks.len() >= 4, "the reference and three recipes: {}", blocks.len());
    for b in blocks {
        if let Err(e) = parse(&format!("{MINIMAL}{b}")) {
            panic!("README [events] block does not parse: {e}\n{b}");
        }
    }
}
