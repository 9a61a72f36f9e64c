//! A token bucket per client address, for the marketplace endpoints: a flood of fulfillment forms must not spend
//! the seller's ResolveCustomer quota, nor crowd out lifecycle events.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Addresses tracked at once; past it, buckets that have refilled (idle clients) are forgotten first.
const MAX_CLIENTS: usize = 10_000;

pub struct PerIp {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl PerIp {
    pub fn new(c: &RateLimitConfig) -> Self {
        Self { per_sec: f64::from(c.per_minute) / 60.0, burst: f64::from(c.burst), buckets: Mutex::default() }
    }

    /// Takes one token for `ip`; false when its bucket is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().expect("rate limit lock");
        if b.len() >= MAX_CLIENTS && !b.contains_key(&ip) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst);
            if b.len() >= MAX_CLIENTS {
                // Every tracked client is busy: refuse newcomers rather than grow without bound.
                return false;
            }
        }
        let (tokens, at) = b.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The client's address: the TCP peer, or — only when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left are client-supplied).
pub fn client_ip(peer: SocketAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let peer = peer.ip();
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(xff) = forwarded_for else { return peer };
    for hop in xff.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage in the header: the last address we can vouch for is the proxy's.
            Err(_) => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_per_address() {
        let l = PerIp::new(&RateLimitConfig { per_minute: 1, burst: 3 });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..10).filter(|_| l.allow(a)).count();
        // One extra token may have refilled if the machine stalled for a minute.
        assert!((3..=4).contains(&allowed), "{allowed}");
        assert!(l.allow(b), "another address has its own bucket");
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let peer = SocketAddr::new(proxy, 5555);
        let stranger = SocketAddr::new("203.0.113.9".parse().unwrap(), 1);
        let trusted = [proxy];
        assert_eq!(client_ip(stranger, Some("1.2.3.4"), &trusted), stranger.ip());
        assert_eq!(client_ip(peer, Some("1.2.3.4, 198.51.100.7"), &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            client_ip(peer, Some("198.51.100.7, 10.0.0.5"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, Some("junk"), &trusted), proxy);
        assert_eq!(client_ip(peer, None, &trusted), proxy);
        assert_eq!(client_ip(peer, Some("1.2.3.4"), &[]), proxy);
    }
}
