//! Serial numbers and the certificate store: uniqueness, length, `mesh-ca list`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use mesh_tests::*;

use super::{json, ZONE};

#[test]
fn two_hundred_serials_are_distinct_long_and_recorded() {
    const N: usize = 200;
    let ca = TestCa::init_unencrypted();
    let mut serials = Vec::with_capacity(N);
    let mut certs = Vec::with_capacity(N);
    for i in 0..N {
        let (out, serial) = ca.issue_ok(ZONE, &format!("w{}", i % 10), &format!("out/{i}"), &[]);
        assert!(serial_bits(&serial) > 64, "serial {serial} carries fewer than 64 bits");
        serials.push(serial.trim_start_matches('0').to_owned());
        certs.push(out.join("cert.pem"));
    }
    let distinct: HashSet<_> = serials.iter().collect();
    assert_eq!(distinct.len(), N, "serials repeat");

    // The Python checker sees every certificate's real serial, checks the profile of each and
    // uniqueness across all of them.
    let paths: Vec<&Path> = certs.iter().map(PathBuf::as_path).collect();
    let o = Cmd::new("python3")
        .arg(py_script("svid_check.py"))
        .args(["--role", "leaf", "--trust-domain", TRUST_DOMAIN, "--json"])
        .args(&paths)
        .run();
    assert!(o.success(), "svid_check rejects some of the {N} leaves:\n{o}");
    let doc = json(&o);
    let results = doc["results"].as_array().expect("results");
    for (r, printed) in results.iter().zip(&serials) {
        assert_eq!(
            r["serial"].as_str(),
            Some(printed.as_str()),
            "printed serial differs from the certificate's"
        );
    }

    let listed = json(ca.cmd("list").arg("--json").run().assert_ok());
    let in_store: HashSet<String> = listed["certificates"]
        .as_array()
        .expect("certificates array")
        .iter()
        .filter_map(|c| c["serial"].as_str())
        .map(|s| s.to_lowercase().replace(':', "").trim_start_matches('0').to_owned())
        .collect();
    let missing: Vec<_> = serials.iter().filter(|s| !in_store.contains(*s)).collect();
    assert!(missing.is_empty(), "{} issued serials are not in the store: {missing:?}", missing.len());
}

#[test]
fn concurrent_issuances_all_succeed_and_are_all_recorded() {
    let ca = TestCa::init_unencrypted();
    let serials: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let ca = &ca;
                s.spawn(move || {
                    (0..5)
                        .map(|i| ca.issue_ok(ZONE, &format!("t{t}"), &format!("c{t}-{i}"), &[]).1)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("issuing thread")).collect()
    });
    assert_eq!(serials.iter().collect::<HashSet<_>>().len(), 20);
    let listed = json(ca.cmd("list").arg("--json").run().assert_ok());
    let in_store: HashSet<String> = listed["certificates"]
        .as_array()
        .expect("certificates array")
        .iter()
        .filter_map(|c| c["serial"].as_str().map(str::to_lowercase))
        .collect();
    for s in &serials {
        assert!(in_store.contains(s), "serial {s} issued concurrently is not in the store");
    }
}

#[test]
fn list_shows_each_issued_certificate() {
    let ca = TestCa::init_unencrypted();
    let mut issued = Vec::new();
    for (zone, wl) in [("payments", "charge"), ("orders", "checkout"), ("frontend", "web")] {
        let (_, serial) = ca.issue_ok(zone, wl, &format!("{zone}-{wl}"), &[]);
        issued.push((format!("spiffe://{TRUST_DOMAIN}/ns/{zone}/sa/{wl}"), serial));
    }
    let o = ca.cmd("list").arg("--json").run();
    let listed = json(o.assert_ok());
    let certs = listed["certificates"].as_array().expect("a certificates array");
    for (id, serial) in &issued {
        let c = certs
            .iter()
            .find(|c| c["serial"].as_str().map(str::to_lowercase).as_deref() == Some(serial.as_str()))
            .unwrap_or_else(|| panic!("serial {serial} not listed:\n{o}"));
        assert_eq!(c["spiffe_id"].as_str(), Some(id.as_str()), "{o}");
        for field in ["not_before", "not_after"] {
            assert!(c[field].is_string() || c[field].is_number(), "{field} missing for {serial}:\n{o}");
        }
        assert!(c["status"].as_str().is_some_and(|s| !s.is_empty()), "status missing for {serial}:\n{o}");
    }
    let plain = ca.cmd("list").run();
    plain.assert_ok();
    for (id, serial) in &issued {
        assert!(plain.stdout.contains(serial.as_str()) && plain.stdout.contains(id.as_str()), "{plain}");
    }
}
