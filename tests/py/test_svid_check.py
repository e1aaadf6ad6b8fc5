#!/usr/bin/env python3
"""Self-tests of svid_check.py: it must accept good SVIDs and reject each kind of bad one.

Run from the repository root:  python3 -m unittest discover -s tests/py -v
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import certfactory as cf  # noqa: E402
import svid_check as sc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

CHECKER = os.path.join(HERE, "svid_check.py")
PEM = serialization.Encoding.PEM


def rules(res: sc.Result) -> set[str]:
    return {v.rule for v in res.violations}


class SpiffeIdSyntax(unittest.TestCase):
    VALID = [
        "spiffe://example.org",
        "spiffe://example.org/ns/payments/sa/charge",
        "spiffe://a-b_c.d9/x",
        "spiffe://example.org/Mixed.Case_path-ok",
        "spiffe://example.org/..a/b..",  # dots inside a segment are fine
    ]
    INVALID = {
        "SPIFFE://example.org/x": "scheme",
        "https://example.org/x": "scheme",
        "spiffe:/example.org/x": "scheme",
        "spiffe://": "empty",
        "spiffe:///x": "empty",
        "spiffe://Example.org/x": "lowercase",
        "spiffe://exa$mple.org/x": "characters",
        "spiffe://example.org:443/x": "port",
        "spiffe://user@example.org/x": "userinfo",
        "spiffe://example.org/x?y=1": "query",
        "spiffe://example.org/x#frag": "fragment",
        "spiffe://example.org/a%2Fb": "percent",
        "spiffe://example.org/": "trailing",
        "spiffe://example.org/a/": "trailing",
        "spiffe://example.org/a//b": "empty segment",
        "spiffe://example.org/a/./b": "'.' segment",
        "spiffe://example.org/a/../b": "'..' segment",
        "spiffe://example.org/a b": "characters",
        "spiffe://" + "a" * 256 + "/x": "255",
        "spiffe://example.org/" + "a" * 2040: "2048",
    }

    def test_valid_ids_have_no_problems(self):
        for uri in self.VALID:
            with self.subTest(uri=uri):
                self.assertEqual(sc.parse_spiffe_id(uri).problems, [])

    def test_invalid_ids_are_named(self):
        for uri, word in self.INVALID.items():
            with self.subTest(uri=uri[:60]):
                problems = sc.parse_spiffe_id(uri).problems
                self.assertTrue(problems, f"{uri[:60]!r} accepted")
                self.assertTrue(any(word in p for p in problems), f"{word!r} not in {problems}")

    def test_trust_domain_and_segments_are_split(self):
        p = sc.parse_spiffe_id("spiffe://example.org/ns/payments/sa/charge")
        self.assertEqual(p.trust_domain, "example.org")
        self.assertEqual(p.segments, ["ns", "payments", "sa", "charge"])
        self.assertIsNone(sc.parse_spiffe_id("spiffe://example.org").segments)


class Variants(unittest.TestCase):
    """Every catalogued certificate is judged as the catalogue says."""

    @classmethod
    def setUpClass(cls):
        cls.root = cf.make_root()
        cls.inter = cf.make_intermediate(cls.root)

    def test_catalogue_covers_every_rule_that_a_certificate_can_break(self):
        covered = {r for v in cf.VARIANTS for r in v.expect_rules}
        documented = {
            "uri-san-count", "spiffe-id", "spiffe-id-shape", "trust-domain", "ca-spiffe-id",
            "basic-constraints", "key-usage", "key-usage-digital-signature", "key-usage-cert-sign",
            "key-usage-crl-sign", "eku", "name-constraints-uri", "serial", "validity",
            "validity-within-issuer", "issuer-signature", "key-algorithm",
        }
        self.assertEqual(documented - covered, set(), "rules without a failing certificate")

    def test_each_variant(self):
        for v in cf.VARIANTS:
            with self.subTest(variant=v.name):
                cert, issuer = v.make(self.root, self.inter)
                res = sc.check_cert(cert, v.role, trust_domain=None, issuer=issuer)
                if not v.expect_rules:
                    self.assertEqual(res.violations, [], f"{v.name} should be accepted")
                else:
                    missing = set(v.expect_rules) - rules(res)
                    self.assertEqual(missing, set(), f"{v.name}: got {res.violations}")

    def test_bad_leaves_are_caught_without_an_issuer_too(self):
        # Issuer-independent rules must not depend on the chain being present.
        for v in cf.VARIANTS:
            independent = set(v.expect_rules) - {"validity-within-issuer", "issuer-signature", "trust-domain"}
            if v.role != "leaf" or not independent:
                continue
            with self.subTest(variant=v.name):
                cert, _ = v.make(self.root, self.inter)
                res = sc.check_cert(cert, "leaf")
                self.assertEqual(independent - rules(res), set(), f"{v.name}: got {res.violations}")

    def test_expected_trust_domain(self):
        leaf = cf.make_leaf(self.inter)
        self.assertEqual(sc.check_cert(leaf.cert, "leaf", "example.org", self.inter.cert).violations, [])
        self.assertIn("trust-domain", rules(sc.check_cert(leaf.cert, "leaf", "other.org")))
        self.assertIn("ca-spiffe-id", rules(sc.check_cert(self.root.cert, "ca", "other.org")))

    def test_roles_are_not_interchangeable(self):
        leaf = cf.make_leaf(self.inter).cert
        as_ca = rules(sc.check_cert(leaf, "ca"))
        self.assertTrue({"basic-constraints", "key-usage-cert-sign", "ca-spiffe-id"} <= as_ca, as_ca)
        as_leaf = rules(sc.check_cert(self.inter.cert, "leaf"))
        self.assertTrue({"basic-constraints", "key-usage-cert-sign", "spiffe-id-shape", "eku"} <= as_leaf, as_leaf)

    def test_serial_bounds(self):
        ok = cf.make_leaf(self.inter, serial=1 << 64).cert  # 9 octets of magnitude
        self.assertNotIn("serial", rules(sc.check_cert(ok, "leaf")))
        short = cf.make_leaf(self.inter, serial=(1 << 64) - 1).cert  # 8 octets
        self.assertIn("serial", rules(sc.check_cert(short, "leaf")))
        # 159 bits: 20 octets DER-encoded, the RFC 5280 maximum (the builder refuses more).
        longest = cf.make_leaf(self.inter, serial=(1 << 159) - 1).cert
        self.assertNotIn("serial", rules(sc.check_cert(longest, "leaf")))

    def test_validity_nesting_boundary_is_inclusive(self):
        t = self.inter.cert
        leaf = cf.make_leaf(self.inter, not_before=t.not_valid_before_utc, not_after=t.not_valid_after_utc).cert
        self.assertEqual(sc.check_cert(leaf, "leaf", issuer=t).violations, [])

    def test_wrong_issuer_is_reported(self):
        other_root = cf.make_root()
        leaf = cf.make_leaf(self.inter).cert
        self.assertIn("issuer-signature", rules(sc.check_cert(leaf, "leaf", issuer=other_root.cert)))


class CommandLine(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        cls.manifest = cf.generate(cls.dir)
        cls.by_name = {v["name"]: v for v in cls.manifest["variants"]}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_checker(self, *args):
        return subprocess.run([sys.executable, CHECKER, *args], capture_output=True, text=True, timeout=60)

    def test_every_manifest_file_gets_the_expected_exit_status_and_rules(self):
        for v in self.manifest["variants"]:
            with self.subTest(variant=v["name"]):
                p = self.run_checker("--role", v["role"], "--trust-domain", "example.org", v["file"])
                if v["good"]:
                    self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                    self.assertIn(": ok", p.stdout)
                else:
                    self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
                    for rule in v["expect_rules"]:
                        self.assertIn(f"VIOLATION {rule}:", p.stdout)

    def test_root_is_a_good_ca(self):
        p = self.run_checker("--role", "ca", "--trust-domain", "example.org", self.manifest["root"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_json_output(self):
        good = self.by_name["good_leaf"]["file"]
        bad = self.by_name["leaf_key_cert_sign"]["file"]
        p = self.run_checker("--role", "leaf", "--json", good, bad)
        self.assertEqual(p.returncode, 1, p.stderr)
        doc = json.loads(p.stdout)
        self.assertFalse(doc["ok"])
        first, second = doc["results"]
        self.assertTrue(first["ok"])
        self.assertEqual(first["spiffe_id"], "spiffe://example.org/ns/payments/sa/charge")
        self.assertFalse(second["ok"])
        self.assertIn("key-usage-cert-sign", [v["rule"] for v in second["violations"]])

    def test_repeated_serial_across_files(self):
        good = self.by_name["good_leaf"]["file"]
        p = self.run_checker("--role", "leaf", good, good)
        self.assertEqual(p.returncode, 1)
        self.assertIn("VIOLATION serial-unique:", p.stdout)
        other = self.by_name["good_leaf_dns_and_key_encipherment"]["file"]
        self.assertEqual(self.run_checker("--role", "leaf", good, other).returncode, 0)

    def test_explicit_issuer_overrides_the_chain(self):
        good = self.by_name["good_leaf"]["file"]
        p = self.run_checker("--role", "leaf", "--issuer", self.manifest["root"], good)
        self.assertEqual(p.returncode, 1)
        self.assertIn("VIOLATION issuer-signature:", p.stdout)
        inter = os.path.join(self.dir, "intermediate.pem")
        self.assertEqual(self.run_checker("--role", "leaf", "--issuer", inter, good).returncode, 0)

    def test_unreadable_input_is_exit_2(self):
        p = self.run_checker("--role", "leaf", os.path.join(self.dir, "nope.pem"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("nope.pem", p.stderr)
        junk = os.path.join(self.dir, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        self.assertEqual(self.run_checker("--role", "leaf", junk).returncode, 2)

    def test_bad_arguments(self):
        good = self.by_name["good_leaf"]["file"]
        self.assertEqual(self.run_checker("--role", "root", good).returncode, 2)
        self.assertEqual(self.run_checker("--role", "leaf", "--trust-domain", "Bad.Org", good).returncode, 2)


class DerSurgery(unittest.TestCase):
    def test_swapped_validity_keeps_a_valid_signature(self):
        root = cf.make_root()
        inter = cf.make_intermediate(root)
        t = cf.now()
        leaf = cf.make_leaf(inter, not_before=t, not_after=t + dt.timedelta(hours=1))
        swapped = cf.swap_validity(leaf, inter.key)
        self.assertGreater(swapped.not_valid_before_utc, swapped.not_valid_after_utc)
        swapped.verify_directly_issued_by(inter.cert)  # raises if the re-signing were wrong
        again = x509.load_pem_x509_certificate(swapped.public_bytes(PEM))
        self.assertEqual(again.serial_number, leaf.cert.serial_number)


if __name__ == "__main__":
    unittest.main()
