//! Error discipline and help text across the whole CLI.

use mesh_tests::*;

use super::{WORKLOAD, ZONE};

#[test]
fn every_error_is_one_line_on_stderr() {
    // One representative of each kind of error the CLI can meet, whether it is caught while
    // parsing flags or later: each must be a single stderr line (and a non-zero exit).
    let ca = TestCa::init_unencrypted();
    let missing = ca.path("missing-ca");
    let blocked = ca.path("blocked");
    std::fs::create_dir_all(blocked.join("cert.pem")).expect("mkdir");
    let issue = |zone: &str, workload: &str, extra: &[&str]| {
        ca.cmd("issue").args(["--zone", zone, "--workload", workload, "--out"]).arg(ca.path("o")).args(extra)
    };
    let cases: Vec<(&str, Cmd)> = vec![
        ("bad --zone", issue("Payments", WORKLOAD, &[])),
        ("bad --workload", issue(ZONE, "-x", &[])),
        ("bad --ttl syntax", issue(ZONE, WORKLOAD, &["--ttl", "abc"])),
        ("--ttl out of range", issue(ZONE, WORKLOAD, &["--ttl", "25h"])),
        ("missing --zone", ca.cmd("issue").args(["--workload", WORKLOAD, "--out"]).arg(ca.path("o"))),
        (
            "unwritable --out",
            ca.cmd("issue").args(["--zone", ZONE, "--workload", WORKLOAD, "--out"]).arg(&blocked),
        ),
        ("missing CA dir", Cmd::mesh_ca().args(["list", "--dir"]).arg(&missing)),
        (
            "CA already exists",
            ca.cmd("init").args(["--trust-domain", TRUST_DOMAIN, "--insecure-no-passphrase"]),
        ),
        (
            "bad --trust-domain",
            Cmd::mesh_ca()
                .args(["init", "--insecure-no-passphrase", "--trust-domain", "Bad.Org", "--dir"])
                .arg(&missing),
        ),
        (
            "no passphrase",
            Cmd::mesh_ca().args(["init", "--trust-domain", TRUST_DOMAIN, "--dir"]).arg(&missing),
        ),
        ("bad --format", ca.cmd("bundle").args(["--format", "jwks"])),
        ("inspect missing file", Cmd::mesh_ca().arg("inspect").arg(&missing)),
        ("unknown subcommand", Cmd::mesh_ca().arg("frobnicate")),
    ];
    let mut failures = Vec::new();
    for (what, cmd) in cases {
        let o = cmd.run();
        if !matches!(o.code(), Some(c) if c != 0) || !o.one_line_error() || o.stderr.contains("panicked") {
            failures.push(format!("{what}:\n{o}"));
        }
    }
    assert!(failures.is_empty(), "errors that are not one stderr line:\n\n{}", failures.join("\n\n"));
}

#[test]
fn help_at_every_level_has_an_example() {
    let top = Cmd::mesh_ca().arg("--help").run();
    assert!(top.success() && top.stdout.contains("Example"), "{top}");
    for sub in ["init", "issue", "bundle", "inspect", "list"] {
        let o = Cmd::mesh_ca().args([sub, "--help"]).run();
        assert!(o.success() && o.stdout.contains("Example"), "`mesh-ca {sub} --help` has no Example:\n{o}");
        assert!(top.stdout.contains(sub), "top-level help does not list {sub}");
    }
}
