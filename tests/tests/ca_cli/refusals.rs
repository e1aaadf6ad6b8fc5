//! `mesh-ca issue` refusals: bad names, passphrases, CA dirs and output dirs.

use std::collections::BTreeSet;

use mesh_tests::*;

use super::{assert_leaf_valid, json, LEAF_ID, WORKLOAD, ZONE};

#[test]
fn issue_refuses_bad_zone_and_workload_names_naming_the_flag() {
    let ca = TestCa::init_unencrypted();
    let long = "a".repeat(64);
    let bad = ["Payments", "..", "-x", "x-", long.as_str(), "pay.ments", "pay_ments", "a/b", ""];
    let mut failures = Vec::new();
    for (i, name) in bad.iter().enumerate() {
        for (flag, zone, workload) in [("--zone", *name, WORKLOAD), ("--workload", ZONE, *name)] {
            let out = format!("{}-{i}", &flag[2..]);
            let o = ca.issue(zone, workload, &out, &[]);
            if let Some(p) = o.error_naming_problem(&[flag]) {
                failures.push(format!("{flag} {name:?}: {p}"));
            }
            if ca.path(&out).exists() {
                failures.push(format!("{flag} {name:?}: the refused issue created {out}"));
            }
        }
    }
    // 63 characters is a valid DNS label.
    let ok = "a".repeat(63);
    let (out, _) = ca.issue_ok(&ok, &ok, "longest", &[]);
    assert_leaf_valid(&ca, &out, None);
    // Only that one leaf was ever signed and recorded.
    let listed = json(ca.cmd("list").arg("--json").run().assert_ok());
    let leaves: Vec<_> = listed["certificates"]
        .as_array()
        .expect("certificates array")
        .iter()
        .filter_map(|c| c["spiffe_id"].as_str())
        .filter(|id| id.contains("/ns/"))
        .collect();
    assert_eq!(leaves.len(), 1, "refused names were recorded in the store: {leaves:?}");
    assert!(failures.is_empty(), "bad names not refused as they should be:\n{}", failures.join("\n"));
}

#[test]
fn issue_with_env_passphrase_file_passphrase_wrong_and_missing_passphrase() {
    // init with the passphrase from the environment ...
    let ca = TestCa::prepare(true);
    Cmd::mesh_ca()
        .arg("init")
        .arg("--dir")
        .arg(&ca.dir)
        .args(["--trust-domain", TRUST_DOMAIN])
        .env(PASSPHRASE_ENV, PASSPHRASE)
        .run()
        .assert_ok();
    let issue = |out: &str| {
        Cmd::mesh_ca()
            .arg("issue")
            .arg("--dir")
            .arg(&ca.dir)
            .args(["--zone", ZONE, "--workload", WORKLOAD, "--out"])
            .arg(ca.path(out))
    };
    // ... wrong passphrase from the environment,
    let wrong = "Tr0ub4dor&3-wrong";
    let o = issue("wrong-env").env(PASSPHRASE_ENV, wrong).run();
    o.assert_error_naming(&["passphrase"]);
    assert!(!o.stderr.contains(wrong) && !o.stdout.contains(wrong), "the passphrase was echoed:\n{o}");
    assert!(
        !ca.path("wrong-env").join("cert.pem").exists() && !ca.path("wrong-env").join("key.pem").exists()
    );
    // ... wrong passphrase from a file,
    let wrong_file = ca.path("wrong-pass");
    std::fs::write(&wrong_file, format!("{wrong}\n")).expect("write");
    let o = issue("wrong-file").arg("--passphrase-file").arg(&wrong_file).run();
    o.assert_error_naming(&["passphrase"]);
    assert!(!o.stderr.contains(wrong), "the passphrase was echoed:\n{o}");
    assert!(
        !ca.path("wrong-file").join("cert.pem").exists() && !ca.path("wrong-file").join("key.pem").exists()
    );
    // ... no passphrase at all,
    let o = issue("none").run();
    o.assert_error_naming(&["passphrase"]);
    assert!(!ca.path("none").join("cert.pem").exists());
    // ... and the right one from a file: the same key whatever the source.
    let o = issue("good").arg("--passphrase-file").arg(ca.pass_file.as_ref().expect("pass file")).run();
    o.assert_ok();
    assert!(!o.stdout.contains(PASSPHRASE) && !o.stderr.contains(PASSPHRASE));
    assert_leaf_valid(&ca, &ca.path("good"), None);
    // Nothing was recorded for the refused attempts.
    let listed = json(ca.cmd("list").arg("--json").run().assert_ok());
    let leaves = listed["certificates"]
        .as_array()
        .expect("certificates array")
        .iter()
        .filter(|c| c["spiffe_id"].as_str() == Some(LEAF_ID))
        .count();
    assert_eq!(leaves, 1, "refused issuances were recorded:\n{listed:#}");
}

#[test]
fn issue_with_a_missing_ca_dir_names_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such-ca");
    let out = tmp.path().join("out");
    let o = Cmd::mesh_ca()
        .arg("issue")
        .arg("--dir")
        .arg(&missing)
        .args(["--zone", ZONE, "--workload", WORKLOAD, "--out"])
        .arg(&out)
        .env(PASSPHRASE_ENV, PASSPHRASE)
        .run();
    o.assert_error_naming(&[&missing.display().to_string()]);
    assert!(!out.exists(), "issue without a CA created the output dir");
    for sub in ["bundle", "list"] {
        Cmd::mesh_ca()
            .arg(sub)
            .arg("--dir")
            .arg(&missing)
            .run()
            .assert_error_naming(&[&missing.display().to_string()]);
    }
    assert!(!missing.exists(), "a command on a missing CA dir created it");
}

#[test]
fn issue_into_an_unwritable_outdir_leaves_no_partial_files() {
    let ca = TestCa::init_unencrypted();
    // A directory squatting on each output name makes that one write fail whatever order the
    // CA writes in (and works even as root, where permission bits do not stop writes).
    let mut failures = Vec::new();
    for blocked in ["cert.pem", "key.pem", "bundle.pem"] {
        let out = ca.path(&format!("blocked-{blocked}"));
        std::fs::create_dir_all(out.join(blocked)).expect("mkdir");
        let o = ca.issue(ZONE, WORKLOAD, &format!("blocked-{blocked}"), &[]);
        o.assert_error_naming(&[&out.display().to_string(), "--out", blocked]);
        let names: BTreeSet<_> = std::fs::read_dir(&out)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        if names != BTreeSet::from([blocked.to_owned()]) {
            failures.push(format!("{blocked} unwritable: {} left holding {names:?}", out.display()));
        }
    }
    assert!(failures.is_empty(), "partial output left behind:\n{}", failures.join("\n"));
    // --out naming a regular file.
    let file = ca.path("a-file");
    std::fs::write(&file, "x").expect("write");
    ca.issue(ZONE, WORKLOAD, "a-file", &[]).assert_error_naming(&[&file.display().to_string(), "--out"]);
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
    // --out below a regular file (cannot be created).
    let below = file.join("sub");
    let o = ca.cmd("issue").args(["--zone", ZONE, "--workload", WORKLOAD, "--out"]).arg(&below).run();
    o.assert_error_naming(&[&below.display().to_string(), &file.display().to_string(), "--out"]);

    if !running_as_root() {
        use std::os::unix::fs::PermissionsExt as _;
        let ro = ca.path("read-only");
        std::fs::create_dir(&ro).expect("mkdir");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        let o = ca.issue(ZONE, WORKLOAD, "read-only", &[]);
        o.assert_error_naming(&[&ro.display().to_string(), "--out"]);
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(std::fs::read_dir(&ro).expect("read_dir").count(), 0, "files left in a read-only outdir");
    }
}
