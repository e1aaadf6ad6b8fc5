//! Per-source limits. A source is a client address as an attacker controls it: an IPv4
//! address, or an IPv6 /64 (one host gets a whole /64, so counting single IPv6 addresses
//! would let it act as 2^64 sources); an IPv4-mapped IPv6 address is its IPv4 address.
//!
//! - [`RateLimiter`]: a token bucket per source (enrollment has no other name for a caller).
//!   The table is bounded: when full, the oldest idle buckets go first.
//! - [`PerSource`]: how many of something (unauthenticated connections, long-polls) each
//!   key holds, capped per key and in total, released by dropping the [`Held`] guard.
//!
//! Used by the CA's accept loop and API, and by the sidecar's inbound listener.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A client address as a unit of limiting: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Self(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts per key, capped per key and in total. Cheap enough to consult on every accept.
pub struct PerSource<K: Eq + Hash + Clone> {
    per_key: usize,
    total: usize,
    state: Mutex<(HashMap<K, usize>, usize)>,
}

/// One unit held by `key` in a [`PerSource`]; dropping it gives the unit back.
pub struct Held<K: Eq + Hash + Clone> {
    table: Arc<PerSource<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> PerSource<K> {
    /// At most `per_key` units per key and `total` overall.
    pub fn new(per_key: usize, total: usize) -> Arc<Self> {
        Arc::new(Self { per_key, total, state: Mutex::new((HashMap::new(), 0)) })
    }

    /// One more unit for `key`, or None when it (or everyone together) is at the cap.
    pub fn try_hold(self: &Arc<Self>, key: K) -> Option<Held<K>> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (map, total) = &mut *g;
        if *total >= self.total {
            return None;
        }
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= self.per_key {
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Held { table: self.clone(), key })
    }

    /// Units `key` holds now.
    pub fn held_by(&self, key: &K) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let mut g = self.table.state.lock().unwrap_or_else(|p| p.into_inner());
        let (map, total) = &mut *g;
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
        *total = total.saturating_sub(1);
    }
}

/// Default sustained requests per second per caller; the burst allowed is twice that.
pub const DEFAULT_RATE: u32 = 50;
/// Callers remembered at once.
const MAX_CALLERS: usize = 10_000;

pub struct RateLimiter {
    /// Requests per second per caller; 0 turns limiting off (load tests from one address).
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<SourceKey, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = per_second as f64;
        Self { rate, burst: rate * 2.0, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request's worth from the bucket of `ip`'s source (its IPv6 /64); false when
    /// it is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let ip = SourceKey::of(ip);
        let (rate, burst) = (self.rate, self.burst);
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_CALLERS && !map.contains_key(&ip) {
            // Forget callers whose buckets have refilled: they are indistinguishable from new.
            map.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_CALLERS {
                return false;
            }
        }
        let (tokens, at) = map.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal() {
        let l = RateLimiter::new(DEFAULT_RATE);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let allowed = (0..200).filter(|_| l.allow(ip)).count();
        assert!((100..=110).contains(&allowed), "allowed {allowed}");
        assert!(l.allow("127.0.0.2".parse().expect("ip")), "other callers are not affected");
        let off = RateLimiter::new(0);
        assert!((0..1000).all(|_| off.allow(ip)));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let l = RateLimiter::new(DEFAULT_RATE);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Every request from another address of the same /64: one bucket between them.
        let allowed = (0..200u16).filter(|i| l.allow(ip(&format!("2001:db8:1:2::{i:x}")))).count();
        assert!((100..=110).contains(&allowed), "allowed {allowed}");
        assert!(!l.allow(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), "the same /64");
        assert!(l.allow(ip("2001:db8:1:3::1")), "the next /64 is another source");
        assert_eq!(SourceKey::of(ip("::ffff:192.0.2.7")), SourceKey::of(ip("192.0.2.7")));
        assert_eq!(SourceKey::of(ip("2001:db8:1:2:aaaa::1")).to_string(), "2001:db8:1:2::/64");
        assert_ne!(SourceKey::of(ip("192.0.2.7")), SourceKey::of(ip("192.0.2.8")));
    }

    #[test]
    fn per_source_caps_each_key_and_the_total_and_gives_back_on_drop() {
        let t = PerSource::new(2, 3);
        let a = SourceKey::of("10.0.0.1".parse().expect("ip"));
        let b = SourceKey::of("10.0.0.2".parse().expect("ip"));
        let (a1, a2) = (t.try_hold(a), t.try_hold(a));
        assert!(a1.is_some() && a2.is_some());
        assert!(t.try_hold(a).is_none(), "a third for one source");
        let b1 = t.try_hold(b);
        assert!(b1.is_some());
        assert!(t.try_hold(b).is_none(), "the total is reached");
        drop(a1);
        assert_eq!(t.held_by(&a), 1);
        assert!(t.try_hold(b).is_some(), "a unit given back is available to others");
    }
}
