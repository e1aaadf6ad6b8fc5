//! Per-caller rate limiting: a token bucket per source IP (enrollment has no other name for a
//! caller). The table is bounded: when full, the oldest idle buckets go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Sustained requests per second per caller, and the burst allowed on top.
const RATE: f64 = 50.0;
const BURST: f64 = 100.0;
/// Callers remembered at once.
const MAX_CALLERS: usize = 10_000;

pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self { buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request's worth from `ip`'s bucket; false when it is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_CALLERS && !map.contains_key(&ip) {
            // Forget callers whose buckets have refilled: they are indistinguishable from new.
            map.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() * RATE < BURST);
            if map.len() >= MAX_CALLERS {
                return false;
            }
        }
        let (tokens, at) = map.entry(ip).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * RATE).min(BURST);
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
        let l = RateLimiter::new();
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let allowed = (0..200).filter(|_| l.allow(ip)).count();
        assert!((100..=110).contains(&allowed), "allowed {allowed}");
        assert!(l.allow("127.0.0.2".parse().expect("ip")), "other callers are not affected");
    }
}
