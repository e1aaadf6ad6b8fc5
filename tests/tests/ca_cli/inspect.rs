//! `mesh-ca inspect`: reports on our certificates and judgement of certificates made elsewhere.

use mesh_tests::*;
use serde_json::Value;

use super::{json, LEAF_ID, WORKLOAD, ZONE};

#[test]
fn inspect_json_describes_our_certificates() {
    let ca = TestCa::init_unencrypted();
    let (out, serial) = ca.issue_ok(ZONE, WORKLOAD, "out", &[]);
    let o = Cmd::mesh_ca().args(["inspect", "--json"]).arg(out.join("cert.pem")).run();
    assert_eq!(o.code(), Some(0), "inspect of a good leaf must exit 0:\n{o}");
    let j = json(&o);
    assert_eq!(j["spiffe_id"], LEAF_ID);
    assert_eq!(j["trust_domain"], TRUST_DOMAIN);
    assert_eq!(j["zone"], ZONE);
    assert_eq!(j["workload"], WORKLOAD);
    let js = j["serial"].as_str().expect("serial").to_lowercase().replace(':', "");
    assert_eq!(js.trim_start_matches('0'), serial.trim_start_matches('0'));
    assert_eq!(j["is_ca"], false);
    let left = j["seconds_left"].as_i64().expect("seconds_left is an integer");
    assert!((3300..=3600).contains(&left), "seconds_left {left} for a fresh 1h leaf");
    for f in ["not_before", "not_after", "issuer"] {
        assert!(!j[f].is_null(), "{f} missing:\n{o}");
    }
    assert_eq!(j["profile"]["ok"], true, "{o}");
    assert_eq!(j["profile"]["violations"].as_array().map(Vec::len), Some(0), "{o}");

    for (file, id) in [("intermediate.pem", "spiffe://example.org"), ("root.pem", "spiffe://example.org")] {
        let o = Cmd::mesh_ca().args(["inspect", "--json"]).arg(ca.dir.join(file)).run();
        assert_eq!(o.code(), Some(0), "inspect of {file} must exit 0:\n{o}");
        let j = json(&o);
        assert_eq!(j["is_ca"], true, "{o}");
        assert_eq!(j["spiffe_id"], id, "{o}");
        assert_eq!(j["trust_domain"], TRUST_DOMAIN, "{o}");
        assert_eq!(j["profile"]["ok"], true, "{o}");
    }

    // Plain text output works too and names the identity.
    let o = Cmd::mesh_ca().arg("inspect").arg(out.join("cert.pem")).run();
    assert!(o.success() && o.stdout.contains(LEAF_ID), "{o}");
}

#[test]
fn inspect_flags_each_bad_certificate_from_the_python_factories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = Cmd::new("python3").arg(py_script("certfactory.py")).arg(tmp.path()).run();
    o.assert_ok();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest is JSON");
    let mut failures = Vec::new();
    let mut checked = 0;
    for v in manifest["variants"].as_array().expect("variants") {
        let name = v["name"].as_str().expect("name");
        if v["profile"] == false {
            continue; // chain-level defects: path validation's job, not the profile's
        }
        checked += 1;
        let file = v["file"].as_str().expect("file");
        let o = Cmd::mesh_ca().args(["inspect", "--json", file]).run();
        let good = v["good"] == true;
        let Ok(j) = serde_json::from_str::<Value>(&o.stdout) else {
            failures.push(format!("{name}: no JSON report (exit {:?}): {}", o.code(), o.stderr.trim()));
            continue;
        };
        let violations = j["profile"]["violations"].as_array().cloned().unwrap_or_default();
        let texts: Vec<String> = violations
            .iter()
            .map(|x| {
                squash(&format!(
                    "{} {}",
                    x["rule"].as_str().unwrap_or(""),
                    x["message"].as_str().unwrap_or("")
                ))
            })
            .collect();
        if good {
            if o.code() != Some(0) || j["profile"]["ok"] != true || !violations.is_empty() {
                failures
                    .push(format!("{name}: good certificate flagged (exit {:?}): {violations:?}", o.code()));
            }
            continue;
        }
        if o.code() != Some(1) || j["profile"]["ok"] != false || violations.is_empty() {
            failures.push(format!(
                "{name}: expected exit 1 and violations, got exit {:?}, ok={}, violations={violations:?}",
                o.code(),
                j["profile"]["ok"]
            ));
            continue;
        }
        let keywords: Vec<&str> =
            v["keywords"].as_array().expect("keywords").iter().filter_map(Value::as_str).collect();
        if !texts.iter().any(|t| keywords.iter().any(|k| t.contains(k))) {
            failures.push(format!("{name}: violations name none of {keywords:?}: {violations:?}"));
        }
        for x in &violations {
            if x["rule"].as_str().is_none_or(str::is_empty) || x["message"].as_str().is_none_or(str::is_empty)
            {
                failures.push(format!("{name}: violation without rule or message: {x}"));
            }
        }
    }
    assert!(checked >= 30, "the factory produced only {checked} profile variants");
    assert!(failures.is_empty(), "mesh-ca inspect disagrees with the SVID profile:\n{}", failures.join("\n"));
}

#[test]
fn inspect_accepts_a_conforming_svid_made_by_openssl() {
    // A root and a leaf made with the openssl CLI alone: inspect must judge the certificate,
    // not recognise its own output.
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| tmp.path().join(n);
    let ext = "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=openssl root\n\
               [ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
               subjectAltName=URI:spiffe://example.org\nsubjectKeyIdentifier=hash\n\
               [leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
               extendedKeyUsage=serverAuth,clientAuth\n\
               subjectAltName=URI:spiffe://example.org/ns/orders/sa/checkout\n\
               subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n\
               [bad]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyCertSign\n\
               extendedKeyUsage=serverAuth,clientAuth\n\
               subjectAltName=URI:spiffe://example.org/ns/orders/sa/checkout\n";
    std::fs::write(p("ext.cnf"), ext).expect("write");
    let ossl = |args: &[&str]| {
        Cmd::new("openssl").args(args).current_dir(tmp.path()).run().assert_ok();
    };
    for key in ["root.key", "leaf.key"] {
        ossl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key]);
    }
    ossl(&[
        "req",
        "-x509",
        "-new",
        "-config",
        "ext.cnf",
        "-extensions",
        "ca",
        "-key",
        "root.key",
        "-days",
        "30",
        "-set_serial",
        "0x7f0102030405060708090a0b0c0d0e0f",
        "-out",
        "root.pem",
    ]);
    ossl(&["req", "-new", "-key", "leaf.key", "-subj", "/CN=checkout", "-out", "leaf.csr"]);
    for (section, out) in [("leaf", "leaf.pem"), ("bad", "bad.pem")] {
        ossl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-extfile",
            "ext.cnf",
            "-extensions",
            section,
            "-days",
            "1",
            "-set_serial",
            "0x3a0102030405060708090a0b0c0d0e0f",
            "-out",
            out,
        ]);
    }
    let chain = std::fs::read_to_string(p("leaf.pem")).expect("leaf")
        + &std::fs::read_to_string(p("root.pem")).expect("root");
    std::fs::write(p("chain.pem"), chain).expect("write");

    // Our independent checker agrees the openssl leaf conforms (sanity of the fixture) ...
    let py = svid_check("leaf", Some(TRUST_DOMAIN), None, &[&p("chain.pem")]);
    assert!(py.success(), "fixture is not a conforming SVID:\n{py}");
    // ... and so must mesh-ca.
    let o = Cmd::mesh_ca().args(["inspect", "--json"]).arg(p("chain.pem")).run();
    assert_eq!(o.code(), Some(0), "inspect rejects a conforming openssl-made SVID:\n{o}");
    let j = json(&o);
    assert_eq!(j["spiffe_id"], "spiffe://example.org/ns/orders/sa/checkout");
    assert_eq!(j["zone"], "orders");
    assert_eq!(j["workload"], "checkout");
    assert_eq!(j["profile"]["ok"], true);

    let o = Cmd::mesh_ca().args(["inspect", "--json"]).arg(p("bad.pem")).run();
    assert_eq!(o.code(), Some(1), "inspect accepts an openssl leaf with keyCertSign:\n{o}");
    assert_eq!(json(&o)["profile"]["ok"], false);
}

#[test]
fn inspect_of_a_missing_or_garbage_file_names_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope.pem");
    Cmd::mesh_ca().arg("inspect").arg(&missing).run().assert_error_naming(&[&missing.display().to_string()]);
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .expect("write");
    Cmd::mesh_ca().arg("inspect").arg(&garbage).run().assert_error_naming(&[&garbage.display().to_string()]);
    let binary = tmp.path().join("random.der");
    std::fs::write(&binary, [0x30u8, 0x82, 0xff, 0xff, 0x00, 0x01, 0x02]).expect("write");
    Cmd::mesh_ca().arg("inspect").arg(&binary).run().assert_error_naming(&[&binary.display().to_string()]);
}
