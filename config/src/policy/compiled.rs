//! The decision structure: rules of one kind indexed by (caller selector, callee selector), so
//! a decision looks at the rules of at most four selector pairs (zone/zone, zone/workload,
//! workload/zone, workload/workload) whatever the size of the policy.
//!
//! The index is two levels of [`BySelector`] rather than one map keyed by an owned
//! `(Selector, Selector)`: lookups then borrow the request's `Zone` and `Workload` and a
//! decision allocates nothing. Only rules naming the same pair (differing in methods or paths)
//! are scanned one by one; the first match in file order wins, so citations are stable.

use std::collections::HashMap;

use super::rule::{Rule, Selector};
use super::Request;
use crate::identity::{SpiffeId, Workload, Zone};

/// Values keyed by `Selector`, looked up with a `SpiffeId` without building a key.
#[derive(Debug)]
struct BySelector<V> {
    zones: HashMap<Zone, ZoneEntry<V>>,
}

#[derive(Debug)]
struct ZoneEntry<V> {
    /// The value for the zone selector (`payments`).
    whole: Option<V>,
    /// The values for workload selectors (`payments/charge`).
    workloads: HashMap<Workload, V>,
}

/// All rules of one kind, plus the pair index over them.
#[derive(Debug)]
pub(crate) struct RuleSet {
    /// In file order; `allow[i]` is `rules[i]`.
    rules: Vec<Rule>,
    /// caller selector -> callee selector -> ascending indexes into `rules`.
    index: BySelector<BySelector<Vec<usize>>>,
}

impl<V> Default for BySelector<V> {
    fn default() -> Self {
        Self { zones: HashMap::new() }
    }
}

impl<V: Default> BySelector<V> {
    fn entry(&mut self, sel: &Selector) -> &mut V {
        let zone = self
            .zones
            .entry(sel.zone().clone())
            .or_insert_with(|| ZoneEntry { whole: None, workloads: HashMap::new() });
        match sel {
            Selector::Zone(_) => zone.whole.get_or_insert_with(V::default),
            Selector::Workload(_, w) => zone.workloads.entry(w.clone()).or_default(),
        }
    }
}

impl<V> BySelector<V> {
    /// The values of the (at most two) selectors that name `id`: its zone, and its workload.
    fn matching(&self, id: &SpiffeId) -> [Option<&V>; 2] {
        match self.zones.get(id.zone()) {
            Some(zone) => [zone.whole.as_ref(), zone.workloads.get(id.workload())],
            None => [None, None],
        }
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut index = BySelector::<BySelector<Vec<usize>>>::default();
        for (i, rule) in rules.iter().enumerate() {
            // Pushed in file order, so every list is ascending.
            index.entry(&rule.from).entry(&rule.to).push(i);
        }
        Self { rules, index }
    }

    /// The first rule in file order that matches the request, if any.
    pub fn first_match(&self, req: &Request<'_>) -> Option<&Rule> {
        let mut best: Option<usize> = None;
        for callees in self.index.matching(req.from).into_iter().flatten() {
            for list in callees.matching(req.to).into_iter().flatten() {
                // All rules in `list` name this pair, so only their conditions need checking.
                let hit = list
                    .iter()
                    .copied()
                    .find(|&i| self.rules.get(i).is_some_and(|r| r.conditions_match(req.http)));
                if let Some(i) = hit {
                    best = Some(best.map_or(i, |b| b.min(i)));
                }
            }
        }
        best.and_then(|i| self.rules.get(i))
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rule::{RuleKind, RuleRef};
    use crate::policy::HttpAttrs;

    fn rule(index: usize, from: &str, to: &str, methods: Option<&[&str]>) -> Rule {
        Rule {
            from: from.parse().expect("valid"),
            to: to.parse().expect("valid"),
            methods: methods.map(|ms| ms.iter().map(|m| (*m).to_owned()).collect()),
            paths: None,
            cite: RuleRef::new(RuleKind::Allow, index, index + 1, format!("allow[{index}]")),
        }
    }

    fn id(s: &str) -> SpiffeId {
        format!("spiffe://td/ns/{s}").parse().expect("valid")
    }

    #[test]
    fn all_four_pairs_are_consulted_and_the_earliest_wins() {
        let set = RuleSet::new(vec![
            rule(0, "a/x", "b/y", None),
            rule(1, "a", "b/y", None),
            rule(2, "a/x", "b", None),
            rule(3, "a", "b", None),
        ]);
        let req = |f: &str, t: &str| {
            let (f, t) = (id(f), id(t));
            set.first_match(&Request { from: &f, to: &t, http: None }).map(|r| r.cite.index())
        };
        assert_eq!(req("a/sa/x", "b/sa/y"), Some(0));
        assert_eq!(req("a/sa/z", "b/sa/y"), Some(1));
        assert_eq!(req("a/sa/x", "b/sa/z"), Some(2));
        assert_eq!(req("a/sa/z", "b/sa/z"), Some(3));
        assert_eq!(req("b/sa/y", "a/sa/x"), None);
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn conditional_rules_are_skipped_when_they_do_not_apply() {
        let set = RuleSet::new(vec![rule(0, "a", "b", Some(&["POST"])), rule(1, "a", "b", Some(&["GET"]))]);
        let (f, t) = (id("a/sa/x"), id("b/sa/y"));
        let hit = |http| set.first_match(&Request { from: &f, to: &t, http }).map(|r| r.cite.index());
        assert_eq!(hit(None), None);
        assert_eq!(hit(Some(HttpAttrs { method: "GET", path: "/" })), Some(1));
        assert_eq!(hit(Some(HttpAttrs { method: "PUT", path: "/" })), None);
    }
}
