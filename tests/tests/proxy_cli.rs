//! `mesh-proxy check` and `mesh-proxy explain`, run as real processes: exit codes, and
//! errors that point at the file, line, column and key at fault.

use std::path::{Path, PathBuf};

use mesh_tests::proxy::*;
use mesh_tests::Output;

/// A policy whose rules start on known lines (numbered in the comments).
const POLICY: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders", "payments"]

[[allow]]
from = "frontend"
to = "orders"

[[allow]]
from = "orders/checkout"
to = "payments/charge"
methods = ["POST"]
paths = ["/charge"]

[[deny]]
from = "frontend/legacy"
to = "orders"
"#;
// allow[0]: lines 4-6, allow[1]: lines 8-12, deny[0]: lines 14-16.

/// A sidecar.toml for `ident`, with `policy.toml` beside it; `extra` is appended.
fn write_config(dir: &Path, ident: &Identity, policy: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("creating a config dir");
    std::fs::write(dir.join("policy.toml"), policy).expect("writing policy.toml");
    let text = format!(
        "policy = \"policy.toml\"\n\n[identity]\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:8080\"\n{extra}",
        ident.cert().display(),
        ident.key().display(),
        ident.bundle().display()
    );
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, text).expect("writing sidecar.toml");
    path
}

/// The 1-based number of the first line of `file` containing `needle`.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("reading back a written file");
    1 + text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
}

fn check(config: &Path) -> Output {
    mesh_proxy(&["check", "--config", &config.display().to_string()])
}

/// Asserts exit 1 and a first error line holding `FILE:LINE:COL: KEY: ` with a message.
#[track_caller]
fn assert_points_at(o: &Output, file: &Path, line: usize, key: &str) {
    assert_eq!(o.code(), Some(1), "expected exit 1:\n{o}");
    o.assert_error_naming(&[&file.display().to_string()]);
    let first = o.stderr_lines()[0];
    let at = format!("{}:{line}:", file.display());
    let rest = first.split_once(&at).map(|(_, r)| r).unwrap_or_else(|| panic!("no `{at}` in:\n{o}"));
    let col_len = rest.chars().take_while(char::is_ascii_digit).count();
    assert!(col_len > 0, "no column after `{at}`:\n{o}");
    let msg = rest[col_len..]
        .strip_prefix(&format!(": {key}: "))
        .unwrap_or_else(|| panic!("expected `: {key}: ` after the position:\n{o}"));
    assert!(msg.len() > 5, "no message:\n{o}");
}

#[test]
fn check_accepts_a_good_config_and_points_at_what_is_broken() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let good = write_config(&mesh.path("good"), &api, POLICY, "");
    let o = check(&good);
    assert!(o.success(), "a good config is refused:\n{o}");

    // sidecar.toml mistakes: (what, text appended after the [inbound] table, text of the
    // line at fault, key).
    let cases = [
        ("unknown key", "protocl = \"tcp\"\n", "protocl", "inbound.protocl"),
        (
            "bad outbound server",
            "\n[[outbound]]\nlisten = \"127.0.0.1:0\"\nconnect = \"127.0.0.1:9\"\nserver = \"orders/api\"\n",
            "server =",
            "outbound[0].server",
        ),
        ("bad duration", "\n[limits]\ndrain_timeout = \"soon\"\n", "drain_timeout", "limits.drain_timeout"),
        ("unknown limit", "\n[limits]\nmax_conns = 5\n", "max_conns", "limits.max_conns"),
        ("non-address listen", "\n[[outbound]]\nlisten = \"localhost\"\nconnect = \"127.0.0.1:9\"\nserver = \"spiffe://example.org/ns/a/sa/b\"\n", "\"localhost\"", "outbound[0].listen"),
    ];
    for (what, extra, needle, key) in cases {
        let config =
            write_config(&mesh.path(&format!("bad-{}", what.replace(' ', "-"))), &api, POLICY, extra);
        let line = line_of(&config, needle);
        assert_points_at(&check(&config), &config, line, key);
    }

    // policy.toml mistakes, reported against the policy file.
    let policy_cases = [
        (
            "unknown zone",
            POLICY.replace("to = \"orders\"\n\n[[allow]]", "to = \"ordrs\"\n\n[[allow]]"),
            "ordrs",
            "allow[0].to",
        ),
        (
            "unknown key in a rule",
            POLICY.replace("from = \"frontend/legacy\"", "form = \"frontend/legacy\""),
            "form",
            "deny[0].form",
        ),
        ("unknown top-level key", format!("default = \"allow\"\n{POLICY}"), "default", "default"),
    ];
    for (what, policy, needle, key) in policy_cases {
        let dir = mesh.path(&format!("badpolicy-{}", what.replace(' ', "-")));
        let config = write_config(&dir, &api, &policy, "");
        let file = dir.join("policy.toml");
        assert_points_at(&check(&config), &file, line_of(&file, needle), key);
    }

    // Certificates: the error names the file at fault.
    let variants = mesh.variants("orders", "api", &["expired", "two_uri_sans"]);
    let web = mesh.identity("frontend", "web");
    // An identity dir assembled from files of others: (source dir, file name) each.
    let assemble = |name: &str, parts: [(&Path, &str); 3]| {
        let dir = mesh.path(name);
        std::fs::create_dir_all(&dir).expect("creating an identity dir");
        for (from, file) in parts {
            std::fs::copy(from.join(file), dir.join(file)).expect("copying a credential file");
        }
        Identity { dir, ..api.clone() }
    };
    let mismatched =
        assemble("mismatched", [(&api.dir, "cert.pem"), (&web.dir, "key.pem"), (&api.dir, "bundle.pem")]);
    let garbage =
        assemble("garbage", [(&api.dir, "cert.pem"), (&api.dir, "key.pem"), (&api.dir, "bundle.pem")]);
    std::fs::write(garbage.cert(), "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("writing garbage");
    let cert_cases = [
        ("expired", &variants["expired"], vec![variants["expired"].cert()]),
        ("not an SVID", &variants["two_uri_sans"], vec![variants["two_uri_sans"].cert()]),
        ("key of another certificate", &mismatched, vec![mismatched.cert(), mismatched.key()]),
        ("garbage certificate", &garbage, vec![garbage.cert()]),
    ];
    for (what, ident, blame) in cert_cases {
        let config =
            write_config(&mesh.path(&format!("badcert-{}", what.replace(' ', "-"))), ident, POLICY, "");
        let o = check(&config);
        assert_eq!(o.code(), Some(1), "{what}: expected exit 1:\n{o}");
        let blame: Vec<String> = blame.iter().map(|p| p.display().to_string()).collect();
        o.assert_error_naming(&blame.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// Runs explain and returns (exit code, the one stdout line).
fn explain(policy: &Path, from: &str, to: &str, http: Option<(&str, &str)>) -> (Option<i32>, String) {
    let p = policy.display().to_string();
    let mut args = vec!["explain", "--policy", &p, "--from", from, "--to", to];
    if let Some((m, path)) = http {
        args.extend(["--method", m, "--path", path]);
    }
    let o = mesh_proxy(&args);
    assert!(!o.stderr.contains("panicked"), "{o}");
    (o.code(), o.stdout.trim_end().to_owned())
}

#[test]
fn explain_cites_the_deciding_rule_and_exits_by_the_decision() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("writing the policy");
    let p = policy.display().to_string();
    let id = |zw: &str| {
        let (z, w) = zw.split_once('/').expect("zone/workload");
        format!("spiffe://example.org/ns/{z}/sa/{w}")
    };

    // (from, to, http, exit code, the cited rule and its first and last line, or None for
    // deny by default)
    type Http = Option<(&'static str, &'static str)>;
    type Cite = Option<(&'static str, usize, usize)>;
    let cases: [(&str, &str, Http, i32, Cite); 8] = [
        ("frontend/web", "orders/api", None, 0, Some(("allow[0]", 4, 6))),
        ("frontend/legacy", "orders/api", None, 1, Some(("deny[0]", 14, 16))),
        ("orders/api", "orders/db", None, 1, None), // intra-zone
        ("front/web", "orders/api", None, 1, None), // near-miss zone
        ("frontend/web", "orders2/api", None, 1, None),
        ("orders/checkout", "payments/charge", Some(("POST", "/charge")), 0, Some(("allow[1]", 8, 12))),
        ("orders/checkout", "payments/charge", Some(("GET", "/charge")), 1, None),
        ("orders/checkout", "payments/charge", None, 1, None), // L7 rule never allows plain TCP
    ];
    for (from, to, http, code, rule) in cases {
        let (got, out) = explain(&policy, from, to, http);
        let what = format!("explain {from} -> {to} {http:?}");
        assert_eq!(got, Some(code), "{what}: exit code; stdout: {out}");
        let verdict = if code == 0 { "ALLOW " } else { "DENY  " };
        assert!(out.starts_with(&format!("{verdict}{} -> {}", id(from), id(to))), "{what}: {out}");
        match rule {
            Some((r, first, last)) => {
                let cite = format!(" by {r} ({p}:");
                let (_, rest) =
                    out.split_once(&cite).unwrap_or_else(|| panic!("{what}: no `{cite}` in {out}"));
                let line: usize = rest.split(')').next().and_then(|l| l.parse().ok()).unwrap_or(0);
                assert!(
                    (first..=last).contains(&line),
                    "{what}: line {line} is not in {r} ({first}-{last}): {out}"
                );
            }
            None => assert!(out.ends_with(": no rule allows it (deny by default)"), "{what}: {out}"),
        }
    }
    // Full SPIFFE IDs are accepted as well as zone/workload.
    let (got, out) = explain(&policy, &id("frontend/web"), &id("orders/api"), None);
    assert_eq!(got, Some(0), "{out}");
    assert!(out.contains(" by allow[0] "), "{out}");
}

/// `check` is `run`'s own preparation, so it refuses what `run` refuses: here a token file
/// whose bytes are not text. `check` used to read it leniently (invalid bytes replaced) and
/// pass, while every enrollment attempt of `run` refused it ("not text"). Now both refuse it
/// up front with the same error; a token file that holds a token passes `check`.
#[test]
fn check_and_run_refuse_the_same_token_file() {
    let mesh = Mesh::new();
    let dir = mesh.path("enroll");
    std::fs::create_dir_all(&dir).expect("creating a config dir");
    std::fs::write(dir.join("policy.toml"), POLICY).expect("writing policy.toml");
    std::fs::copy(mesh.ca.dir.join("root.pem"), dir.join("ca.pem")).expect("copying the CA's root");
    let config = dir.join("sidecar.toml");
    std::fs::write(
        &config,
        // Port 9 (discard): nothing here may reach a CA; neither command gets that far.
        "policy = \"policy.toml\"\n\n[identity]\nca_url = \"https://127.0.0.1:9\"\nca_bundle = \"ca.pem\"\n\
         token_file = \"token\"\n\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:8080\"\n",
    )
    .expect("writing sidecar.toml");
    let token = dir.join("token");
    let config = config.display().to_string();

    std::fs::write(&token, b"ztm1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n").expect("writing the token");
    let o = mesh_proxy(&["check", "--config", &config]);
    assert!(o.success(), "a token file holding a token is refused:\n{o}");

    std::fs::write(&token, b"ztm1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\xff\n")
        .expect("writing the token");
    let checked = mesh_proxy(&["check", "--config", &config]);
    assert_eq!(checked.code(), Some(1), "check accepted a token file run cannot read:\n{checked}");
    checked.assert_error_naming(&[&token.display().to_string()]);
    assert!(checked.stderr_lines()[0].ends_with("not text"), "{checked}");
    let ran = mesh_proxy(&["run", "--config", &config]);
    assert_eq!(ran.code(), Some(3), "run started with a token file it cannot read:\n{ran}");
    ran.assert_error_naming(&[&token.display().to_string()]);
    assert!(ran.stderr_lines()[0].ends_with("not text"), "{ran}");
    assert_eq!(ran.stdout, "", "run printed events before refusing:\n{ran}");
}

#[test]
fn version_is_the_crate_version() {
    let out = mesh_proxy(&["--version"]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("mesh-proxy {}", env!("CARGO_PKG_VERSION")), "{out}");
}

/// The bash script parses (`bash -n`), and sourcing it registers a completion for
/// mesh-proxy that knows the subcommands; zsh and fish scripts are printed too.
#[test]
fn completions_parse_and_register() {
    let out = mesh_proxy(&["completions", "bash"]);
    out.assert_ok();
    for word in ["run", "check", "explain", "completions", "--config"] {
        assert!(out.stdout.contains(word), "the bash completions do not offer {word}:\n{out}");
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let script = tmp.path().join("mesh-proxy.bash");
    std::fs::write(&script, &out.stdout).expect("writing the script");
    mesh_tests::Cmd::new("bash").arg("-n").arg(&script).run().assert_ok();
    let loaded = mesh_tests::Cmd::new("bash")
        .args(["-c", "source \"$0\" && complete -p mesh-proxy"])
        .arg(&script)
        .run();
    loaded.assert_ok();
    assert!(loaded.stdout.contains("mesh-proxy"), "{loaded}");
    for shell in ["zsh", "fish"] {
        let out = mesh_proxy(&["completions", shell]);
        out.assert_ok();
        assert!(out.stdout.contains("mesh-proxy") && out.stdout.contains("explain"), "{shell}:\n{out}");
    }
}
