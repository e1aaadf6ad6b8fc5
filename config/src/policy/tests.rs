//! Policy semantics end to end: text in, decisions out. Includes the property test against a
//! naive linear scan and the 10,000-rule test.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

const POLICY: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders", "payments"]

[[allow]]
from = "frontend"
to = "orders"

[[allow]]
from = "orders/checkout"
to = "payments/charge"
methods = ["POST"]
paths = ["/charge", "/v1/*"]

[[deny]]
from = "frontend/legacy"
to = "orders"

[[deny]]
from = "orders/checkout"
to = "payments"
methods = ["DELETE"]

[[allow]]
from = "payments"
to = "payments/ledger"
"#;

fn policy() -> Policy {
    Policy::from_str_named(POLICY, "policy.toml").expect("valid policy")
}

fn id(s: &str) -> SpiffeId {
    s.parse().expect("valid id")
}

fn org(zone_workload: &str) -> SpiffeId {
    let (z, w) = zone_workload.split_once('/').expect("zone/workload");
    id(&format!("spiffe://example.org/ns/{z}/sa/{w}"))
}

fn tcp<'a>(from: &'a SpiffeId, to: &'a SpiffeId) -> Request<'a> {
    Request { from, to, http: None }
}

fn http<'a>(from: &'a SpiffeId, to: &'a SpiffeId, method: &'a str, path: &'a str) -> Request<'a> {
    Request { from, to, http: Some(HttpAttrs { method, path }) }
}

/// (reason, "kind[index]") of a decision, for compact assertions.
fn verdict(d: &Decision<'_>) -> (Reason, Option<String>) {
    (d.reason(), d.rule().map(|r| format!("{}[{}]", r.kind(), r.index())))
}

#[test]
fn policies_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
}

#[test]
fn allow_deny_and_default() {
    let p = policy();
    let (web, legacy, api) = (org("frontend/web"), org("frontend/legacy"), org("orders/api"));
    let d = p.decide(&tcp(&web, &api));
    assert!(d.allowed());
    assert_eq!(verdict(&d), (Reason::AllowRule, Some("allow[0]".into())));
    // deny beats allow
    assert_eq!(verdict(&p.decide(&tcp(&legacy, &api))), (Reason::DenyRule, Some("deny[0]".into())));
    // no reverse direction, and deny by default inside a zone too
    assert_eq!(verdict(&p.decide(&tcp(&api, &web))), (Reason::NoRule, None));
    assert_eq!(verdict(&p.decide(&tcp(&web, &org("frontend/other")))), (Reason::NoRule, None));
    assert!(!p.decide(&tcp(&api, &api)).allowed());
}

#[test]
fn l7_conditions_fail_closed_for_tcp() {
    let p = policy();
    let (checkout, charge) = (org("orders/checkout"), org("payments/charge"));
    assert_eq!(verdict(&p.decide(&tcp(&checkout, &charge))), (Reason::NoRule, None));
    let ok = |m, path| p.decide(&http(&checkout, &charge, m, path)).allowed();
    assert!(ok("POST", "/charge"));
    assert!(ok("POST", "/v1"));
    assert!(ok("POST", "/v1/refunds/7"));
    assert!(!ok("GET", "/charge"));
    assert!(!ok("post", "/charge"));
    assert!(!ok("POST", "/charges"));
    assert!(!ok("POST", "/v10"));
    // A conditional deny denies only the HTTP requests it describes ...
    let d = p.decide(&http(&checkout, &charge, "DELETE", "/charge"));
    assert_eq!(verdict(&d), (Reason::DenyRule, Some("deny[1]".into())));
    // ... and does not deny TCP, which an unconditional allow then lets through.
    let ledger = org("payments/ledger");
    let d = p.decide(&tcp(&charge, &ledger));
    assert_eq!(verdict(&d), (Reason::AllowRule, Some("allow[2]".into())));
}

#[test]
fn foreign_trust_domains_are_denied_before_rules() {
    let p = policy();
    let (web, api) = (org("frontend/web"), org("orders/api"));
    let foreign_web = id("spiffe://evil.org/ns/frontend/sa/web");
    let foreign_api = id("spiffe://evil.org/ns/orders/sa/api");
    for (f, t) in [(&foreign_web, &api), (&web, &foreign_api), (&foreign_web, &foreign_api)] {
        let d = p.decide(&tcp(f, t));
        assert_eq!(verdict(&d), (Reason::ForeignTrustDomain, None));
        assert!(d.to_string().ends_with(": foreign trust domain"), "{d}");
    }
}

#[test]
fn explain_lines() {
    let p = policy();
    let (web, api, charge) = (org("frontend/web"), org("orders/api"), org("payments/charge"));
    assert_eq!(
        p.decide(&tcp(&web, &api)).to_string(),
        "ALLOW spiffe://example.org/ns/frontend/sa/web -> spiffe://example.org/ns/orders/sa/api \
         by allow[0] (policy.toml:5) frontend -> orders"
    );
    assert_eq!(
        p.decide(&tcp(&web, &charge)).to_string(),
        "DENY  spiffe://example.org/ns/frontend/sa/web -> spiffe://example.org/ns/payments/sa/charge: \
         no rule allows it (deny by default)"
    );
    let checkout = org("orders/checkout");
    assert_eq!(
        p.decide(&http(&checkout, &charge, "POST", "/charge")).to_string(),
        "ALLOW spiffe://example.org/ns/orders/sa/checkout -> spiffe://example.org/ns/payments/sa/charge \
         POST /charge by allow[1] (policy.toml:9) orders/checkout -> payments/charge methods=POST \
         paths=/charge,/v1/*"
    );
    let d = p.decide(&http(&checkout, &charge, "GET", "/x\n\u{1b}[2J"));
    assert!(d.to_string().ends_with("GET /x\\n\\u{1b}[2J: no rule allows it (deny by default)"), "{d}");
    assert_eq!(Reason::NoRule.as_str(), "no_rule");
}

#[test]
fn empty_and_deny_all_policies_deny_everything() {
    let td: TrustDomain = "example.org".parse().expect("valid");
    let (a, b) = (org("orders/a"), org("orders/b"));
    let empty = Policy::from_str_named("trust_domain = \"example.org\"\nzones = [\"orders\"]\n", "p.toml")
        .expect("valid empty policy");
    for p in [empty, Policy::deny_all(td.clone())] {
        assert_eq!(p.trust_domain(), &td);
        assert_eq!(verdict(&p.decide(&tcp(&a, &b))), (Reason::NoRule, None));
        assert_eq!(verdict(&p.decide(&http(&a, &a, "GET", "/"))), (Reason::NoRule, None));
    }
}

#[test]
fn from_file_names_the_path_in_errors_and_citations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, POLICY).expect("write policy");
    let p = Policy::from_file(&path).expect("valid policy");
    let (web, api) = (org("frontend/web"), org("orders/api"));
    let shown = format!("({}:5)", path.display());
    assert!(p.decide(&tcp(&web, &api)).to_string().contains(&shown));
    std::fs::write(&path, POLICY.replace("to = \"orders\"", "to = \"order\"")).expect("write policy");
    let e = Policy::from_file(&path).expect_err("undeclared zone");
    assert_eq!(
        (e.file(), e.line(), e.column(), e.key()),
        (path.display().to_string().as_str(), Some(6), Some(6), Some("allow[0].to"))
    );
    let e = Policy::from_file(dir.path().join("missing.toml")).expect_err("missing");
    assert!(matches!(e, ConfigError::Read { .. }));
}

#[test]
fn ten_thousand_rules_decide_correctly() {
    let zones: Vec<String> = (0..100).map(|i| format!("\"z{i}\"")).collect();
    let mut text = format!("trust_domain = \"example.org\"\nzones = [{}]\n", zones.join(", "));
    for i in 0..100 {
        for j in 0..100 {
            text += &format!("[[allow]]\nfrom = \"z{i}/w{j}\"\nto = \"z{}\"\n", (i + 1) % 100);
        }
    }
    text += "[[deny]]\nfrom = \"z5/w5\"\nto = \"z6\"\n";
    let p = Policy::from_str_named(&text, "big.toml").expect("valid policy");
    let check = |from: &str, to: &str, want: (Reason, Option<&str>)| {
        let (f, t) = (org(from), org(to));
        let got = verdict(&p.decide(&tcp(&f, &t)));
        assert_eq!(got, (want.0, want.1.map(String::from)), "{from} -> {to}");
    };
    check("z3/w7", "z4/any", (Reason::AllowRule, Some("allow[307]")));
    check("z99/w0", "z0/x", (Reason::AllowRule, Some("allow[9900]")));
    check("z3/w7", "z5/any", (Reason::NoRule, None));
    check("z3/w100", "z4/any", (Reason::NoRule, None));
    check("z5/w5", "z6/x", (Reason::DenyRule, Some("deny[0]")));
    check("z5/w4", "z6/x", (Reason::AllowRule, Some("allow[504]")));
    let (f, t) = (org("z42/w42"), org("z43/api"));
    let d = p.decide(&tcp(&f, &t));
    assert_eq!(d.rule().map(RuleRef::line), Some(3 + 3 * 4242 + 1));
}

/// A rule of the naive model: plain strings, matched by a linear scan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NaiveRule {
    deny: bool,
    from: (String, Option<String>),
    to: (String, Option<String>),
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
}

impl NaiveRule {
    fn side_matches(side: &(String, Option<String>), id: &SpiffeId) -> bool {
        side.0 == id.zone().as_str() && side.1.as_ref().is_none_or(|w| w == id.workload().as_str())
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        if !Self::side_matches(&self.from, req.from) || !Self::side_matches(&self.to, req.to) {
            return false;
        }
        if self.methods.is_none() && self.paths.is_none() {
            return true;
        }
        let Some(h) = req.http else { return false };
        let path_ok = |p: &String| match p.strip_suffix("/*") {
            Some(prefix) => h.path == prefix || h.path.starts_with(&format!("{prefix}/")),
            None => h.path == p,
        };
        self.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| m == h.method))
            && self.paths.as_ref().is_none_or(|ps| ps.iter().any(path_ok))
    }

    fn toml(&self) -> String {
        let side = |s: &(String, Option<String>)| match &s.1 {
            Some(w) => format!("{}/{w}", s.0),
            None => s.0.clone(),
        };
        let list = |v: &Vec<String>| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let mut t = format!(
            "[[{}]]\nfrom = \"{}\"\nto = \"{}\"\n",
            if self.deny { "deny" } else { "allow" },
            side(&self.from),
            side(&self.to)
        );
        if let Some(ms) = &self.methods {
            t += &format!("methods = [{}]\n", list(ms));
        }
        if let Some(ps) = &self.paths {
            t += &format!("paths = [{}]\n", list(ps));
        }
        t
    }
}

/// The first matching deny, else the first matching allow, by index within the kind.
fn naive_decide(rules: &[NaiveRule], req: &Request<'_>) -> (Reason, Option<String>) {
    if req.from.trust_domain().as_str() != "example.org" || req.to.trust_domain().as_str() != "example.org" {
        return (Reason::ForeignTrustDomain, None);
    }
    for (deny, kind, reason) in [(true, "deny", Reason::DenyRule), (false, "allow", Reason::AllowRule)] {
        let of_kind = rules.iter().filter(|r| r.deny == deny);
        if let Some(i) = of_kind.clone().position(|r| r.matches(req)) {
            return (reason, Some(format!("{kind}[{i}]")));
        }
    }
    (Reason::NoRule, None)
}

fn side() -> impl Strategy<Value = (String, Option<String>)> {
    (prop::sample::select(vec!["a", "b", "c"]), prop::option::of(prop::sample::select(vec!["x", "y"])))
        .prop_map(|(z, w)| (z.to_owned(), w.map(str::to_owned)))
}

fn subset(items: &[&str]) -> impl Strategy<Value = Option<Vec<String>>> {
    let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    let n = items.len();
    prop::option::weighted(0.3, prop::sample::subsequence(items, 1..=n))
}

fn naive_rule() -> impl Strategy<Value = NaiveRule> {
    (prop::bool::weighted(0.3), side(), side(), subset(&["GET", "POST"]), subset(&["/a", "/a/*", "/b", "/*"]))
        .prop_map(|(deny, from, to, methods, paths)| NaiveRule { deny, from, to, methods, paths })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn indexed_decisions_equal_a_linear_scan(generated in prop::collection::vec(naive_rule(), 0..40)) {
        // Duplicate rules are a parse error, so keep the first of each.
        let mut seen = HashSet::new();
        let rules: Vec<NaiveRule> = generated.into_iter().filter(|r| seen.insert(r.clone())).collect();
        let mut text = "trust_domain = \"example.org\"\nzones = [\"a\", \"b\", \"c\"]\n".to_owned();
        for r in &rules {
            text += &r.toml();
        }
        let p = Policy::from_str_named(&text, "p.toml").expect("generated policies are valid");

        let mut ids: Vec<SpiffeId> = Vec::new();
        for z in ["a", "b", "c", "d"] {
            for w in ["x", "y", "z"] {
                ids.push(org(&format!("{z}/{w}")));
            }
        }
        ids.push(id("spiffe://other.org/ns/a/sa/x"));
        let mut attrs = vec![None];
        for m in ["GET", "POST", "PUT"] {
            for path in ["/", "/a", "/a/", "/a/b", "/ab", "/b", "/b/c"] {
                attrs.push(Some(HttpAttrs { method: m, path }));
            }
        }
        for from in &ids {
            for to in &ids {
                for &http in &attrs {
                    let req = Request { from, to, http };
                    prop_assert_eq!(verdict(&p.decide(&req)), naive_decide(&rules, &req), "{:?}", req);
                }
            }
        }
    }
}
