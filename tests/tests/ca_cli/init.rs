//! `mesh-ca init`: what it writes, and what it refuses.

use mesh_tests::*;

#[test]
fn init_writes_a_private_dir_with_encrypted_keys_openssl_can_read() {
    let ca = TestCa::init(&[]);
    assert_eq!(mode(&ca.dir), 0o700, "the CA directory must be 0700");
    for f in ["root.pem", "intermediate.pem", "root.key.pem", "intermediate.key.pem", "ca.toml", "store.db"] {
        assert!(ca.dir.join(f).is_file(), "init did not write {f}");
    }
    let wrong_pass_out = ca.path("wrong.out");
    for (key, cert) in [("root.key.pem", "root.pem"), ("intermediate.key.pem", "intermediate.pem")] {
        let key_path = ca.dir.join(key);
        assert_eq!(mode(&key_path), 0o600, "{key} must be 0600");
        let text = std::fs::read_to_string(&key_path).expect("key file is text");
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key} is not encrypted PKCS#8:\n{text}"
        );
        assert!(!text.contains("BEGIN PRIVATE KEY") && !text.contains("BEGIN EC PRIVATE KEY"));

        let ok = Cmd::new("openssl")
            .args(["pkcs8", "-in"])
            .arg(&key_path)
            .args(["-passin", &format!("pass:{PASSPHRASE}")])
            .run();
        assert!(
            ok.success() && ok.stdout.contains("-----BEGIN PRIVATE KEY-----"),
            "openssl cannot decrypt {key}:\n{ok}"
        );

        let bad = Cmd::new("openssl")
            .args(["pkcs8", "-in"])
            .arg(&key_path)
            .args(["-passin", "pass:not the passphrase", "-out"])
            .arg(&wrong_pass_out)
            .run();
        assert!(!bad.success(), "openssl decrypted {key} with a wrong passphrase:\n{bad}");

        // The decrypted key is the one the certificate certifies.
        let pubkey = openssl_key_pubkey(&key_path, Some(PASSPHRASE));
        pubkey.assert_ok();
        assert_eq!(pubkey.stdout, openssl_cert_pubkey(&ca.dir.join(cert)), "{key} does not match {cert}");
    }
    let sqlite_magic = std::fs::read(ca.dir.join("store.db")).expect("store.db readable");
    assert!(sqlite_magic.starts_with(b"SQLite format 3\0"), "store.db is not an SQLite database");
}

#[test]
fn init_without_a_passphrase_refuses_and_creates_nothing() {
    let ca = TestCa::prepare(false);
    let o = Cmd::mesh_ca().arg("init").arg("--dir").arg(&ca.dir).args(["--trust-domain", TRUST_DOMAIN]).run();
    o.assert_error_naming(&["passphrase"]);
    assert!(!ca.dir.exists(), "init without a passphrase created {}", ca.dir.display());

    // An existing empty directory stays empty.
    std::fs::create_dir(&ca.dir).expect("mkdir");
    let o = Cmd::mesh_ca().arg("init").arg("--dir").arg(&ca.dir).args(["--trust-domain", TRUST_DOMAIN]).run();
    o.assert_error_naming(&["passphrase"]);
    assert!(snapshot(&ca.dir).is_empty(), "init without a passphrase wrote files");

    // A passphrase file that does not exist is named.
    let missing = ca.path("no-such-passphrase-file");
    let o = Cmd::mesh_ca()
        .arg("init")
        .arg("--dir")
        .arg(&ca.dir)
        .args(["--trust-domain", TRUST_DOMAIN, "--passphrase-file"])
        .arg(&missing)
        .run();
    o.assert_error_naming(&[&missing.display().to_string()]);
    assert!(snapshot(&ca.dir).is_empty(), "init with a missing passphrase file wrote files");
}

#[test]
fn init_insecure_no_passphrase_writes_plain_keys_still_0600() {
    let ca = TestCa::init_unencrypted();
    assert_eq!(mode(&ca.dir), 0o700);
    for key in ["root.key.pem", "intermediate.key.pem"] {
        let p = ca.dir.join(key);
        assert_eq!(mode(&p), 0o600, "{key} must be 0600");
        let text = std::fs::read_to_string(&p).expect("key file is text");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}:\n{text}");
    }
}

#[test]
fn init_refuses_an_existing_ca_and_leaves_it_untouched() {
    let ca = TestCa::init_unencrypted();
    let before = snapshot(&ca.dir);
    let dir = ca.dir.display().to_string();
    for (td, pass) in [(TRUST_DOMAIN, false), ("other.org", false), (TRUST_DOMAIN, true)] {
        let mut c = Cmd::mesh_ca().arg("init").arg("--dir").arg(&ca.dir).args(["--trust-domain", td]);
        c = if pass { c.env(PASSPHRASE_ENV, PASSPHRASE) } else { c.arg("--insecure-no-passphrase") };
        c.run().assert_error_naming(&[&dir]);
        assert!(snapshot(&ca.dir) == before, "a refused init changed {dir}");
    }
}

#[test]
fn init_rejects_a_bad_trust_domain_naming_the_flag() {
    for td in ["Example.ORG", "example.org/path", "spiffe://example.org", "exa mple.org", ""] {
        let ca = TestCa::prepare(false);
        let o = Cmd::mesh_ca()
            .arg("init")
            .arg("--dir")
            .arg(&ca.dir)
            .args(["--trust-domain", td, "--insecure-no-passphrase"])
            .run();
        o.assert_error_naming(&["--trust-domain"]);
        assert!(!ca.dir.exists(), "a refused init created {}", ca.dir.display());
    }
}
