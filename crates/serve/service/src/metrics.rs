//! Prometheus text exposition of what the service did, kept in memory.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the identify latency histogram, in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
pub struct Metrics {
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Error code → count.
    errors: Mutex<BTreeMap<String, u64>>,
    identify: Mutex<Histogram>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    pub in_flight: AtomicI64,
    /// Connections closed on accept because the cap was reached.
    pub connections_refused: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        *lock(&self.requests).entry((route.to_string(), status)).or_default() += 1;
    }

    pub fn error(&self, code: &str) {
        *lock(&self.errors).entry(code.to_string()).or_default() += 1;
    }

    pub fn identified(&self, took: Duration) {
        let s = took.as_secs_f64();
        let mut h = lock(&self.identify);
        for (i, bound) in BUCKETS.iter().enumerate() {
            if s <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    pub fn reload(&self, ok: bool) {
        *lock(&self.reloads).entry(if ok { "ok" } else { "failed" }).or_default() += 1;
    }

    /// The text format, with the model's identity and age as gauges.
    pub fn render(&self, model_id: &str, classes: usize, loaded_unix: f64) -> String {
        let mut out = String::new();
        out.push_str("# HELP fruits_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE fruits_http_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "fruits_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP fruits_http_errors_total Error responses by error code.\n");
        out.push_str("# TYPE fruits_http_errors_total counter\n");
        for (code, n) in lock(&self.errors).iter() {
            let _ = writeln!(out, "fruits_http_errors_total{{code=\"{code}\"}} {n}");
        }
        out.push_str(
            "# HELP fruits_identify_seconds Time to identify one photo (decode and model), successful requests.\n",
        );
        out.push_str("# TYPE fruits_identify_seconds histogram\n");
        let h = lock(&self.identify);
        for (bound, n) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "fruits_identify_seconds_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "fruits_identify_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "fruits_identify_seconds_sum {}", h.sum);
        let _ = writeln!(out, "fruits_identify_seconds_count {}", h.count);
        out.push_str("# HELP fruits_identify_in_flight Photos being identified or waiting for a worker.\n");
        out.push_str("# TYPE fruits_identify_in_flight gauge\n");
        let _ = writeln!(
            out,
            "fruits_identify_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP fruits_connections_refused_total Connections closed on accept: the connection cap was reached.\n",
        );
        out.push_str("# TYPE fruits_connections_refused_total counter\n");
        let _ = writeln!(
            out,
            "fruits_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        out.push_str("# HELP fruits_model_reloads_total Model reloads by outcome.\n");
        out.push_str("# TYPE fruits_model_reloads_total counter\n");
        for (outcome, n) in lock(&self.reloads).iter() {
            let _ = writeln!(out, "fruits_model_reloads_total{{outcome=\"{outcome}\"}} {n}");
        }
        out.push_str("# HELP fruits_model_info The model answering: its id and number of classes.\n");
        out.push_str("# TYPE fruits_model_info gauge\n");
        let _ = writeln!(out, "fruits_model_info{{model=\"{model_id}\",classes=\"{classes}\"}} 1");
        out.push_str("# HELP fruits_model_loaded_timestamp_seconds When the model answering was loaded.\n");
        out.push_str("# TYPE fruits_model_loaded_timestamp_seconds gauge\n");
        let _ = writeln!(out, "fruits_model_loaded_timestamp_seconds {loaded_unix}");
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
