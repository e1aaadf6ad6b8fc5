//! Per-caller rate limiting: a token bucket per source IP (enrollment has no other name for a
//! caller). The table is bounded: when full, the oldest idle buckets go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Default sustained requests per second per caller; the burst allowed is twice that.
pub const DEFAULT_RATE: u32 = 50;
/// Callers remembered at once.
const MAX_CALLERS: usize = 10_000;

pub struct RateLimiter {
    /// Requests per second per caller; 0 turns limiting off (load tests from one address).
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = per_second as f64;
        Self { rate, burst: rate * 2.0, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request's worth from `ip`'s bucket; false when it is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.rate == 0.0 {
            return true;
        }
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
}
