//! What one client, and all of them together, may ask of the service: who
//! the client is ([`client_key`], trusted proxies), its request rate, its
//! photos in progress, and the limits on connections and uploads.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every limit of the service, all configurable from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted upload, in bytes.
    pub body_bytes: usize,
    /// Largest accepted image, in pixels (checked from the header, before decoding).
    pub pixels: u64,
    /// Longest time one request may take, upload included.
    pub request_timeout: Duration,
    /// Photos being identified or waiting for a worker; more get 503 `busy`.
    pub in_flight: usize,
    /// Photos decoded and run through the model at once (CPU-bound work).
    pub workers: usize,
    /// Sustained requests per second per client address; 0 turns the limit off.
    pub rate_per_second: f64,
    /// Requests a client may make at once above its sustained rate.
    pub burst: f64,
    /// Photos one client may have in progress at once (a share of
    /// `in_flight`), so that one address's slow uploads cannot take every place.
    pub in_flight_per_client: usize,
    /// Open connections at once; more are closed as soon as accepted.
    pub connections: usize,
    /// Longest wait for a request's head, and for the next request on an
    /// idle keep-alive connection; then the connection is closed.
    pub header_timeout: Duration,
    /// Least average upload rate, bytes per second, counted from
    /// [`UPLOAD_GRACE`] into the upload; a slower upload gets 408.
    pub min_upload_rate: f64,
    /// After SIGTERM, how long requests in flight may take to finish before
    /// the process ends anyway.
    pub shutdown_grace: Duration,
}

/// How long an upload may take before [`Limits::min_upload_rate`] applies
/// (a phone on a weak signal starts slowly).
pub const UPLOAD_GRACE: Duration = Duration::from_secs(5);

/// A limit that cannot work, named by its command-line flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("--timeout-seconds must be positive")]
    Timeout,
    #[error("--rate-limit must be ≥ 0 and --burst ≥ 1")]
    Rate,
    #[error("--max-connections, --max-in-flight-per-client and --header-timeout-seconds must be positive")]
    Connections,
    #[error("--min-upload-rate must be ≥ 0")]
    UploadRate,
}

impl Limits {
    /// Refuses limits under which no request could succeed or no client be limited.
    pub fn validate(self) -> Result<Self, LimitError> {
        if self.request_timeout.is_zero() {
            return Err(LimitError::Timeout);
        }
        if !(self.rate_per_second >= 0.0 && self.burst >= 1.0) {
            return Err(LimitError::Rate);
        }
        if self.connections == 0 || self.in_flight_per_client == 0 || self.header_timeout.is_zero() {
            return Err(LimitError::Connections);
        }
        if !(self.min_upload_rate >= 0.0 && self.min_upload_rate.is_finite()) {
            return Err(LimitError::UploadRate);
        }
        Ok(self)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 20 << 20,
            pixels: 50_000_000,
            request_timeout: Duration::from_secs(15),
            in_flight: 32,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            rate_per_second: 10.0,
            burst: 30.0,
            in_flight_per_client: 8,
            // Each idle connection holds at most a 64 KiB read buffer
            // (`connections`): 2,048 of them, 128 MiB at worst.
            connections: 2048,
            header_timeout: Duration::from_secs(10),
            // A 20 MB upload at this rate takes 20 minutes: only a stalled
            // or trickling client is cut off.
            min_upload_rate: 16.0 * 1024.0,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is itself alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("'{0}' is not an address range like 10.0.0.0/8 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(text.to_string());
        let (addr, bits) = text.split_once('/').map_or((text, None), |(a, b)| (a, Some(b)));
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.trim().parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix(u32::from(n).into(), u32::from(a).into(), self.bits, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix(u128::from(n), u128::from(a), self.bits, 128),
            _ => false,
        }
    }
}

/// Whether the first `bits` of two `width`-bit numbers agree.
fn prefix(a: u128, b: u128, bits: u8, width: u32) -> bool {
    let shift = width - u32::from(bits);
    shift >= width || (a >> shift) == (b >> shift)
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Who a request counts against: the connecting address, or, when that is a
/// trusted proxy, the nearest address in `X-Forwarded-For` that is not one
/// (read from the right: a client can write anything on the left). IPv6
/// addresses count by their /64, which one subscriber usually holds whole.
pub fn client_key(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = canonical(peer);
    if is_trusted(client) {
        for hop in forwarded_for.unwrap_or("").rsplit(',') {
            // An unreadable entry ends the walk: beyond it nothing is known,
            // and the last proxy's word is all there is.
            let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
            client = canonical(ip);
            if !is_trusted(client) {
                break;
            }
        }
    }
    match client {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Photos in progress per client, each at most `per_client`.
pub struct Places {
    per_client: usize,
    taken: Mutex<HashMap<IpAddr, usize>>,
}

impl Places {
    pub fn new(per_client: usize) -> Self {
        Self {
            per_client: per_client.max(1),
            taken: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one of `client`'s places, or `false` when it holds them all.
    /// Entries go when their count does: the table never holds more
    /// clients than there are photos in progress.
    pub fn take(&self, client: IpAddr) -> bool {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let n = taken.entry(client).or_insert(0);
        if *n >= self.per_client {
            return false;
        }
        *n += 1;
        true
    }

    pub fn give_back(&self, client: IpAddr) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = taken.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                taken.remove(&client);
            }
        }
    }

    pub fn clients(&self) -> usize {
        self.taken.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A token bucket per client address.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Above this many tracked clients, full buckets are forgotten.
const MAX_TRACKED: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` to go ahead, or the seconds to wait before the next request.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            forget(&mut buckets, self.rate, self.burst, now);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Client addresses being tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Makes room in a full table: first the buckets that have refilled (they
/// would start full anyway), then, when many addresses are all busy (a
/// spread-out flood), the half seen longest ago. That lets those clients
/// start again with a full burst, a lesser harm than memory without bound.
fn forget(buckets: &mut HashMap<IpAddr, Bucket>, rate: f64, burst: f64, now: Instant) {
    buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
    if buckets.len() >= MAX_TRACKED / 2 {
        let mut seen: Vec<Instant> = buckets.values().map(|b| b.at).collect();
        let (_, middle, _) = seen.select_nth_unstable(buckets.len() / 2);
        let middle = *middle;
        buckets.retain(|_, b| b.at > middle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert!(Limits::default().validate().is_ok());
        let zero_time = Limits {
            request_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert_eq!(zero_time.validate().unwrap_err(), LimitError::Timeout);
        let no_burst = Limits {
            burst: 0.5,
            ..Limits::default()
        };
        assert_eq!(no_burst.validate().unwrap_err(), LimitError::Rate);
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(a, t0), Ok(()));
        }
        assert_eq!(limiter.check(a, t0), Err(1));
        assert_eq!(limiter.check(b, t0), Ok(()));
        // Half a second at 2/s gives one more request.
        assert_eq!(limiter.check(a, t0 + Duration::from_millis(500)), Ok(()));
        assert!(limiter.check(a, t0 + Duration::from_millis(500)).is_err());
        assert_eq!(RateLimiter::new(0.0, 1.0).check(a, t0), Ok(()));
    }

    #[test]
    fn address_ranges_parse_and_match_v4_v6_and_mapped_addresses() {
        let lan: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(lan.contains("10.200.3.4".parse().unwrap()));
        assert!(lan.contains("::ffff:10.1.2.3".parse().unwrap()), "v4 written as v6");
        assert!(!lan.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()) && !one.contains("192.168.1.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "proxy", "10.0.0/8", ""] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy_and_v6_counts_by_64() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A client that is not a trusted proxy cannot choose who it is.
        assert_eq!(
            client_key(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Behind the proxy: the nearest untrusted hop, read from the right
        // (the client wrote "6.6.6.6" itself).
        let chain = Some("6.6.6.6, 198.51.100.7, 10.0.0.5");
        assert_eq!(client_key(ip("10.0.0.2"), chain, &trusted), ip("198.51.100.7"));
        // No header, or an unreadable hop: the proxy's own address.
        assert_eq!(client_key(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(client_key(ip("10.0.0.2"), Some("junk"), &trusted), ip("10.0.0.2"));
        assert_eq!(
            client_key(ip("10.0.0.2"), Some("1.1.1.1, junk"), &trusted),
            ip("10.0.0.2")
        );
        // Nothing is trusted by default.
        assert_eq!(client_key(ip("10.0.0.2"), Some("1.1.1.1"), &[]), ip("10.0.0.2"));
        // One IPv6 subscriber's /64 is one client; v4-mapped is v4.
        let a = client_key(ip("2001:db8:1:2:aaaa::1"), None, &[]);
        assert_eq!(a, client_key(ip("2001:db8:1:2:ffff::9"), None, &[]));
        assert_eq!(a, ip("2001:db8:1:2::"));
        assert_ne!(a, client_key(ip("2001:db8:1:3::1"), None, &[]));
        assert_eq!(client_key(ip("::ffff:192.0.2.1"), None, &[]), ip("192.0.2.1"));
    }

    #[test]
    fn the_client_table_stays_bounded_under_a_spread_out_flood() {
        // A burst of 1 leaves every bucket empty: nothing has refilled.
        let limiter = RateLimiter::new(0.001, 1.0);
        let t0 = Instant::now();
        for i in 0..3 * MAX_TRACKED as u32 {
            let client = IpAddr::V4((0x0A00_0000 + i).into());
            assert_eq!(limiter.check(client, t0 + Duration::from_micros(u64::from(i))), Ok(()));
            assert!(limiter.tracked() <= MAX_TRACKED);
        }
        // The most recent clients are still remembered, and limited.
        let last = IpAddr::V4((0x0A00_0000 + 3 * MAX_TRACKED as u32 - 1).into());
        assert!(limiter.check(last, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn each_client_holds_at_most_its_places() {
        let places = Places::new(2);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(places.take(a) && places.take(a));
        assert!(!places.take(a), "a third is refused");
        assert!(places.take(b), "another client is not affected");
        places.give_back(a);
        assert!(places.take(a));
        places.give_back(a);
        places.give_back(a);
        places.give_back(b);
        assert_eq!(places.clients(), 0, "emptied entries are dropped");
    }
}
