//! `mesh-ca issue`: what a good issuance produces, judged by the independent validators.

use mesh_tests::*;

use super::{assert_leaf_valid, split_chain, WORKLOAD, ZONE};

#[test]
fn issued_chain_passes_openssl_webpki_and_the_python_svid_checker() {
    let ca = TestCa::init(&[]);
    let dns = "charge.payments.svc";
    let (out, serial) = ca.issue_ok(ZONE, WORKLOAD, "out", &["--dns", dns]);

    // Files and modes.
    assert_eq!(mode(&out.join("key.pem")), 0o600, "key.pem must be 0600");
    let key = std::fs::read_to_string(out.join("key.pem")).expect("key.pem");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "key.pem is not plain PKCS#8:\n{key}");
    let chain = read_pem_certs(&out.join("cert.pem"));
    assert_eq!(chain.len(), 2, "cert.pem must be leaf then intermediate");
    assert_eq!(
        chain[1],
        read_pem_certs(&ca.dir.join("intermediate.pem"))[0],
        "cert.pem[1] is not the intermediate"
    );
    assert_eq!(
        read_pem_certs(&out.join("bundle.pem")),
        read_pem_certs(&ca.dir.join("root.pem")),
        "bundle.pem is not the root"
    );

    // The key is the leaf's key.
    let (leaf, _) = split_chain(&out);
    let kp = openssl_key_pubkey(&out.join("key.pem"), None);
    kp.assert_ok();
    assert_eq!(kp.stdout, openssl_cert_pubkey(&leaf), "key.pem does not match the leaf");

    // The serial printed is the certificate's serial.
    let o = Cmd::new("openssl").args(["x509", "-noout", "-serial", "-in"]).arg(&leaf).run();
    o.assert_ok();
    let actual = o.stdout.trim().trim_start_matches("serial=").to_lowercase();
    assert_eq!(
        actual.trim_start_matches('0'),
        serial.trim_start_matches('0'),
        "printed serial != certificate serial"
    );
    assert!(serial_bits(&serial) > 64, "serial {serial} carries fewer than 64 bits");

    // Default TTL 1h, notBefore at most slightly backdated.
    let (nb, na) = cert_times(&leaf);
    let now = now_unix();
    assert!(nb <= now && now - nb <= 15 * 60, "notBefore {nb} is not a small backdate from {now}");
    assert!((now + 3600 - 120..=now + 3600 + 5).contains(&na), "notAfter {na} is not now+1h (now {now})");

    assert_leaf_valid(&ca, &out, Some(dns));
    // The --dns name is present, and only it: webpki refuses another name.
    let roots = read_pem_certs(&out.join("bundle.pem"));
    assert!(
        webpki_verify(&chain, &roots, Some("other.payments.svc")).is_err(),
        "webpki accepted a name not issued"
    );

    // The CA certificates themselves: profile (python) and path validation (openssl).
    let root = ca.dir.join("root.pem");
    let inter = ca.dir.join("intermediate.pem");
    let py = svid_check("ca", Some(TRUST_DOMAIN), Some(&root), &[&inter]);
    assert!(py.success(), "svid_check rejects the intermediate:\n{py}");
    let py = svid_check("ca", Some(TRUST_DOMAIN), Some(&root), &[&root]);
    assert!(py.success(), "svid_check rejects the root:\n{py}");
    for cert in [&inter, &root] {
        let o = Cmd::new("openssl").args(["verify", "-x509_strict", "-CAfile"]).arg(&root).arg(cert).run();
        assert!(o.success(), "openssl verify rejects {}:\n{o}", cert.display());
    }
    // The intermediate's validity lies inside the root's.
    let (rnb, rna) = cert_times(&root);
    let (inb, ina) = cert_times(&inter);
    assert!(rnb <= inb && ina <= rna, "intermediate validity is not within the root's");
}

#[test]
fn validators_reject_a_leaf_from_another_ca() {
    // The negative control for the three validators above: a leaf chained to another root.
    let a = TestCa::init_unencrypted();
    let b = TestCa::init_unencrypted();
    let (out_a, _) = a.issue_ok(ZONE, WORKLOAD, "out", &[]);
    let (leaf, rest) = split_chain(&out_a);
    let b_root = b.dir.join("root.pem");
    for purpose in ["sslserver", "sslclient"] {
        let o = openssl_verify(&leaf, &b_root, Some(&rest), purpose);
        assert!(!o.success(), "openssl verify accepted a leaf of another CA:\n{o}");
    }
    let chain = read_pem_certs(&out_a.join("cert.pem"));
    assert!(webpki_verify(&chain, &read_pem_certs(&b_root), None).is_err(), "webpki accepted a foreign leaf");
    let py = svid_check("leaf", Some(TRUST_DOMAIN), Some(&b.dir.join("intermediate.pem")), &[&leaf]);
    assert_eq!(py.code(), Some(1), "svid_check accepted a foreign leaf:\n{py}");
    assert!(py.stdout.contains("issuer-signature"), "{py}");
    // ... and the same leaf is fine against its own CA.
    assert_leaf_valid(&a, &out_a, None);
}

#[test]
fn ttl_defaults_and_bounds_come_from_init() {
    let ca = TestCa::prepare(false);
    Cmd::mesh_ca()
        .arg("init")
        .arg("--dir")
        .arg(&ca.dir)
        .args(["--trust-domain", TRUST_DOMAIN, "--insecure-no-passphrase"])
        .args(["--min-leaf-ttl", "5m", "--max-leaf-ttl", "2h", "--default-leaf-ttl", "30m"])
        .run()
        .assert_ok();

    let (out, _) = ca.issue_ok(ZONE, WORKLOAD, "default", &[]);
    let (_, na) = cert_times(&out.join("cert.pem"));
    let now = now_unix();
    assert!((now + 1800 - 120..=now + 1800 + 5).contains(&na), "default TTL is not the configured 30m");

    let (out, _) = ca.issue_ok(ZONE, WORKLOAD, "max", &["--ttl", "2h"]);
    let (_, na) = cert_times(&out.join("cert.pem"));
    let now = now_unix();
    assert!((now + 7200 - 120..=now + 7200 + 5).contains(&na), "--ttl 2h not honoured");
    assert_leaf_valid(&ca, &out, None);

    for ttl in ["3h", "2h1m", "4m", "1m"] {
        let o = ca.issue(ZONE, WORKLOAD, &format!("refused-{ttl}"), &["--ttl", ttl]);
        o.assert_error_naming(&["--ttl"]);
        assert!(
            !ca.path(&format!("refused-{ttl}")).join("cert.pem").exists(),
            "a refused issue wrote a cert"
        );
    }
}

#[test]
fn issue_refuses_ttls_outside_the_default_bounds() {
    let ca = TestCa::init_unencrypted();
    for ttl in ["30s", "59s", "25h", "24h1s", "8760h", "abc", "0s"] {
        let out = format!("out-{ttl}");
        ca.issue(ZONE, WORKLOAD, &out, &["--ttl", ttl]).assert_error_naming(&["--ttl", ttl]);
        assert!(!ca.path(&out).join("cert.pem").exists() && !ca.path(&out).join("key.pem").exists());
    }
    for ttl in ["1m", "24h"] {
        let (out, _) = ca.issue_ok(ZONE, WORKLOAD, &format!("ok-{ttl}"), &["--ttl", ttl]);
        assert_leaf_valid(&ca, &out, None);
    }
}
