//! policy.toml text -> validated, typed rules. Refuses anything ambiguous or probably mistyped
//! (unknown keys, undeclared zones, duplicates, conditions that could never match), each with
//! one located error saying what would be valid. Indexing and deciding are not done here.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::rule::{check_method, PathPattern, Rule, RuleKind, RuleRef, Selector};
use crate::error::{ConfigError, Source};
use crate::identity::{TrustDomain, Zone};

/// Zones listed in an "is not in zones" error before the list is cut short.
const ZONES_SHOWN: usize = 12;

/// The file's shape, before any value is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    trust_domain: Spanned<String>,
    #[serde(default)]
    zones: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<RawRule>,
    #[serde(default)]
    deny: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Spanned<String>,
    to: Spanned<String>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A policy file's content, every value checked.
#[derive(Debug)]
pub(crate) struct ParsedPolicy {
    pub trust_domain: TrustDomain,
    pub zones: Vec<Zone>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// What makes two rules the same rule: selectors plus condition sets (order-insensitive).
type RuleKey = (Selector, Selector, Option<Vec<String>>, Option<Vec<PathPattern>>);

/// Parses and checks a whole policy file.
pub(crate) fn parse(src: &Source<'_>) -> Result<ParsedPolicy, ConfigError> {
    let raw: RawPolicy = src.parse()?;
    let trust_domain = trust_domain(src, &raw.trust_domain)?;
    let zones = zones(src, &raw.zones)?;
    let allow = rules(src, RuleKind::Allow, raw.allow, &zones)?;
    let deny = rules(src, RuleKind::Deny, raw.deny, &zones)?;
    Ok(ParsedPolicy { trust_domain, zones, allow, deny })
}

fn trust_domain(src: &Source<'_>, raw: &Spanned<String>) -> Result<TrustDomain, ConfigError> {
    let value = raw.get_ref();
    if value.starts_with("spiffe:") {
        let msg = format!("{value:?} is a SPIFFE ID; write the trust domain alone, e.g. \"example.org\"");
        return Err(src.invalid(raw.span(), "trust_domain", msg));
    }
    value.parse().map_err(|e| {
        let msg = format!("{value:?} is not a valid trust domain: it {e}; write a name like \"example.org\"");
        src.invalid(raw.span(), "trust_domain", msg)
    })
}

fn zones(src: &Source<'_>, raw: &[Spanned<String>]) -> Result<Vec<Zone>, ConfigError> {
    let mut seen = HashMap::new();
    let mut zones = Vec::with_capacity(raw.len());
    for (i, z) in raw.iter().enumerate() {
        let key = format!("zones[{i}]");
        let zone: Zone = z.get_ref().parse().map_err(|e| {
            let msg = format!("{:?} is not a valid zone name: it {e}", z.get_ref());
            src.invalid(z.span(), &key, msg)
        })?;
        if let Some(first) = seen.insert(zone.clone(), i) {
            let msg = format!("zone \"{zone}\" is listed twice (first as zones[{first}]); remove one");
            return Err(src.invalid(z.span(), key, msg));
        }
        zones.push(zone);
    }
    Ok(zones)
}

fn rules(
    src: &Source<'_>,
    kind: RuleKind,
    raw: Vec<RawRule>,
    zones: &[Zone],
) -> Result<Vec<Rule>, ConfigError> {
    let mut seen: HashMap<RuleKey, (usize, usize)> = HashMap::new();
    let mut rules = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        let key = format!("{kind}[{index}]");
        let line = src.position(raw.from.span().start).0;
        let from = selector(src, &raw.from, &format!("{key}.from"), zones)?;
        let to = selector(src, &raw.to, &format!("{key}.to"), zones)?;
        let methods = conditions(src, raw.methods.as_ref(), &format!("{key}.methods"), "method", |m| {
            check_method(m).map(|()| m.to_owned())
        })?;
        let paths = conditions(src, raw.paths.as_ref(), &format!("{key}.paths"), "path", PathPattern::parse)?;

        let same = (from.clone(), to.clone(), sorted(&methods), sorted(&paths));
        if let Some((first, first_line)) = seen.insert(same, (index, line)) {
            let msg = format!("same rule as {kind}[{first}] (line {first_line}); remove one");
            return Err(src.invalid(raw.from.span(), key, msg));
        }
        let mut rule =
            Rule { from, to, methods, paths, cite: RuleRef::new(kind, index, line, String::new()) };
        rule.cite = RuleRef::new(kind, index, line, rule.describe(kind, index, src.name, line));
        rules.push(rule);
    }
    Ok(rules)
}

fn selector(
    src: &Source<'_>,
    raw: &Spanned<String>,
    key: &str,
    zones: &[Zone],
) -> Result<Selector, ConfigError> {
    let value = raw.get_ref();
    let sel: Selector = value.parse().map_err(|e| {
        let msg = format!(
            "{value:?} is not a valid selector: {e}; write a zone (\"payments\") or zone/workload \
             (\"payments/charge\")"
        );
        src.invalid(raw.span(), key, msg)
    })?;
    if zones.contains(sel.zone()) {
        return Ok(sel);
    }
    let msg = if zones.is_empty() {
        format!("zone \"{}\" is not in zones, which is empty; declare it there first", sel.zone())
    } else {
        let shown: Vec<&str> = zones.iter().take(ZONES_SHOWN).map(Zone::as_str).collect();
        let more = zones.len().saturating_sub(ZONES_SHOWN);
        let more = if more > 0 { format!(", and {more} more") } else { String::new() };
        format!("zone \"{}\" is not in zones ({}{more})", sel.zone(), shown.join(", "))
    };
    Err(src.invalid(raw.span(), key, msg))
}

/// A copy of a condition list in canonical order, for duplicate detection.
fn sorted<T: Ord + Clone>(list: &Option<Vec<T>>) -> Option<Vec<T>> {
    list.clone().map(|mut v| {
        v.sort();
        v
    })
}

/// Parses an optional methods/paths list: absent means "any", present must be non-empty and
/// free of repeats (an empty list would make a rule that can never match).
fn conditions<T: PartialEq>(
    src: &Source<'_>,
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    key: &str,
    what: &str,
    parse: impl Fn(&str) -> Result<T, &'static str>,
) -> Result<Option<Vec<T>>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get_ref().is_empty() {
        let msg = format!("is empty, so the rule could never match; leave the key out to match every {what}");
        return Err(src.invalid(raw.span(), key, msg));
    }
    let mut out: Vec<T> = Vec::with_capacity(raw.get_ref().len());
    for (i, item) in raw.get_ref().iter().enumerate() {
        let value = item.get_ref();
        let parsed = parse(value)
            .map_err(|why| src.invalid(item.span(), format!("{key}[{i}]"), format!("{value:?}: {why}")))?;
        if out.contains(&parsed) {
            let msg = format!("{value:?} is listed twice; remove one");
            return Err(src.invalid(item.span(), format!("{key}[{i}]"), msg));
        }
        out.push(parsed);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "trust_domain = \"example.org\"\nzones = [\"frontend\", \"orders\", \"payments\"]\n";

    fn parse_text(text: &str) -> Result<ParsedPolicy, ConfigError> {
        parse(&Source::new("policy.toml", text))
    }

    /// Parses HEAD + `body` and returns the error's Display.
    fn error(body: &str) -> String {
        match parse_text(&format!("{HEAD}{body}")) {
            Ok(_) => panic!("expected an error for:\n{body}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_file_parses_with_lines_and_citations() {
        let p = parse_text(&format!(
            "{HEAD}\n[[allow]]\nfrom = \"frontend\"\nto = \"orders\"\n\n[[allow]]\nfrom = \"orders/checkout\"\n\
             to = \"payments/charge\"\nmethods = [\"POST\"]\npaths = [\"/charge\", \"/v1/*\"]\n\n[[deny]]\n\
             from = \"frontend/legacy\"\nto = \"orders\"\n"
        ))
        .expect("valid policy");
        assert_eq!(p.trust_domain.as_str(), "example.org");
        assert_eq!(p.zones.len(), 3);
        assert_eq!(p.allow[0].cite.text(), "allow[0] (policy.toml:5) frontend -> orders");
        assert_eq!(
            p.allow[1].cite.text(),
            "allow[1] (policy.toml:9) orders/checkout -> payments/charge methods=POST paths=/charge,/v1/*"
        );
        assert_eq!(p.deny[0].cite.text(), "deny[0] (policy.toml:15) frontend/legacy -> orders");
        assert_eq!(
            (p.deny[0].cite.kind(), p.deny[0].cite.index(), p.deny[0].cite.line()),
            (RuleKind::Deny, 0, 15)
        );
    }

    #[test]
    fn undeclared_zone_names_line_column_key_and_valid_zones() {
        let e = error("[[allow]]\nfrom = \"frontend\"\nto = \"orders\"\n[[allow]]\nfrom = \"pamyents\"\nto = \"orders\"\n");
        assert_eq!(
            e,
            "policy.toml:7:8: allow[1].from: zone \"pamyents\" is not in zones (frontend, orders, payments)"
        );
        let e = error("[[deny]]\nfrom = \"frontend\"\nto = \"pay/charge\"\n");
        assert_eq!(
            e,
            "policy.toml:5:6: deny[0].to: zone \"pay\" is not in zones (frontend, orders, payments)"
        );
        let e =
            parse_text("trust_domain = \"td\"\n[[allow]]\nfrom = \"a\"\nto = \"b\"\n").expect_err("no zones");
        assert!(e.to_string().contains("is not in zones, which is empty"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_with_valid_keys() {
        let e = error("[[allow]]\nfrom = \"frontend\"\nto = \"orders\"\nmethod = [\"GET\"]\n");
        assert_eq!(
            e,
            "policy.toml:6:1: allow[0].method: unknown key `method`; valid keys here: `from`, `to`, \
             `methods`, `paths`"
        );
        let e = error("version = 2\n");
        assert!(e.starts_with("policy.toml:3:1: version: unknown key `version`"), "{e}");
    }

    #[test]
    fn bad_names_are_explained() {
        let e = error("[[allow]]\nfrom = \"Frontend\"\nto = \"orders\"\n");
        assert_eq!(
            e,
            "policy.toml:4:8: allow[0].from: \"Frontend\" is not a valid selector: zone contains 'F'; allowed \
             are lowercase letters, digits and '-'; write a zone (\"payments\") or zone/workload (\"payments/charge\")"
        );
        let e = error("[[allow]]\nfrom = \"frontend\"\nto = \"orders/a/b\"\n");
        assert!(
            e.starts_with("policy.toml:5:6: allow[0].to: \"orders/a/b\" is not a valid selector: has more"),
            "{e}"
        );
        let e = error("[[allow]]\nfrom = \"spiffe://example.org/ns/orders/sa/x\"\nto = \"orders\"\n");
        assert!(e.contains(
            "allow[0].from: \"spiffe://example.org/ns/orders/sa/x\" is not a valid selector: is a SPIFFE ID"
        ));
    }

    #[test]
    fn trust_domain_and_zone_errors() {
        let e = parse_text("trust_domain = \"Example.org\"\n").expect_err("upper case");
        assert_eq!(
            e.to_string(),
            "policy.toml:1:16: trust_domain: \"Example.org\" is not a valid trust domain: it contains 'E'; \
             allowed are lowercase letters, digits and '.', '-', '_'; write a name like \"example.org\""
        );
        let e = parse_text("trust_domain = \"spiffe://example.org\"\n").expect_err("uri");
        assert!(e.to_string().contains("is a SPIFFE ID; write the trust domain alone"), "{e}");
        let e = parse_text("zones = []\n").expect_err("missing");
        assert_eq!(e.to_string(), "policy.toml:1:1: missing key `trust_domain`");
        let e = parse_text("trust_domain = \"td\"\nzones = [\"a\", \"b\",\n  \"a\"]\n").expect_err("dup");
        assert_eq!(
            e.to_string(),
            "policy.toml:3:3: zones[2]: zone \"a\" is listed twice (first as zones[0]); remove one"
        );
        let e = parse_text("trust_domain = \"td\"\nzones = [\"a_b\"]\n").expect_err("bad zone");
        assert!(e
            .to_string()
            .starts_with("policy.toml:2:10: zones[0]: \"a_b\" is not a valid zone name: it contains '_'"));
    }

    #[test]
    fn duplicate_rules_are_refused_whatever_the_order_of_conditions() {
        let rule = "[[allow]]\nfrom = \"orders\"\nto = \"payments\"\nmethods = [\"GET\", \"POST\"]\n";
        let flipped = "[[allow]]\nfrom = \"orders\"\nto = \"payments\"\nmethods = [\"POST\", \"GET\"]\n";
        let e = error(&format!("{rule}{flipped}"));
        assert_eq!(e, "policy.toml:8:8: allow[1]: same rule as allow[0] (line 4); remove one");
        // Same selectors with another kind or other conditions make different rules.
        let deny = rule.replace("[[allow]]", "[[deny]]");
        let plain = "[[allow]]\nfrom = \"orders\"\nto = \"payments\"\n";
        assert!(parse_text(&format!("{HEAD}{rule}{deny}{plain}")).is_ok());
    }

    #[test]
    fn conditions_are_checked() {
        let r = "[[allow]]\nfrom = \"orders\"\nto = \"payments\"\n";
        let e = error(&format!("{r}methods = [\"post\"]\n"));
        assert!(
            e.starts_with("policy.toml:6:12: allow[0].methods[0]: \"post\": methods are uppercase"),
            "{e}"
        );
        let e = error(&format!("{r}paths = [\"/ok\", \"charge\"]\n"));
        assert_eq!(e, "policy.toml:6:17: allow[0].paths[1]: \"charge\": paths start with '/'");
        let e = error(&format!("{r}paths = []\n"));
        assert!(
            e.starts_with("policy.toml:6:9: allow[0].paths: is empty, so the rule could never match"),
            "{e}"
        );
        let e = error(&format!("{r}methods = [\"GET\", \"GET\"]\n"));
        assert_eq!(e, "policy.toml:6:19: allow[0].methods[1]: \"GET\" is listed twice; remove one");
        let e = error(&format!("{r}methods = \"GET\"\n"));
        assert!(e.starts_with(
            "policy.toml:6:11: allow[0].methods: invalid type: string \"GET\", expected a sequence"
        ));
    }

    #[test]
    fn long_zone_lists_are_cut_short() {
        let zones: Vec<String> = (0..20).map(|i| format!("\"z{i:02}\"")).collect();
        let text = format!(
            "trust_domain = \"td\"\nzones = [{}]\n[[allow]]\nfrom = \"x\"\nto = \"z00\"\n",
            zones.join(",")
        );
        let e = parse_text(&text).expect_err("undeclared").to_string();
        assert!(e.ends_with("z10, z11, and 8 more)"), "{e}");
    }
}
