//! What one client, and all of them together, may ask of the service.

use std::collections::HashMap;
use std::net::IpAddr;
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
}

/// A limit that cannot work, named by its command-line flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("--timeout-seconds must be positive")]
    Timeout,
    #[error("--rate-limit must be ≥ 0 and --burst ≥ 1")]
    Rate,
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
        }
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
        if buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
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
}
