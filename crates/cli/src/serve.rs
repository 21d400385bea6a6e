//! `fruits serve`: the consumer API and web page.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use fruits_serve::{Cidr, Config, Limits, ModelSource};

use crate::ModelDirArg;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The model: a bundle folder or a `fruits run` output (path, file://, s3://)
    #[arg(long, env = "FRUITS_MODEL")]
    pub model: String,
    /// Address to listen on
    #[arg(long, env = "FRUITS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// "Not sure" below this top-1 probability [default: the bundle's calibrated threshold]
    #[arg(long)]
    pub min_confidence: Option<f32>,
    /// Trust X-Forwarded-For from peers in this range, e.g. 10.0.0.0/8 (repeatable or comma-separated; default: trust none)
    #[arg(long, value_name = "CIDR", env = "FRUITS_TRUST_FORWARDED_FOR", value_delimiter = ',')]
    pub trust_forwarded_for: Vec<Cidr>,
    /// Serve /metrics, full /readyz and the reload endpoint here instead, e.g. 127.0.0.1:9090; the public address then serves none of them
    #[arg(long, env = "FRUITS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub backbone: ModelDirArg,
}

/// The service's limits (see `fruits_serve::Limits`).
#[derive(clap::Args, Clone)]
pub struct LimitArgs {
    /// Largest upload, bytes
    #[arg(long, default_value_t = Limits::default().body_bytes)]
    pub max_body_bytes: usize,
    /// Largest image, pixels (checked before decoding)
    #[arg(long, default_value_t = Limits::default().pixels)]
    pub max_pixels: u64,
    /// Longest request, upload included, seconds
    #[arg(long, default_value_t = Limits::default().request_timeout.as_secs_f64())]
    pub timeout_seconds: f64,
    /// Photos in progress at once (more get 503 busy)
    #[arg(long, default_value_t = Limits::default().in_flight)]
    pub max_in_flight: usize,
    /// Photos decoded and run through the model at once [default: CPU cores]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Requests per second per client address (0: no limit)
    #[arg(long, default_value_t = Limits::default().rate_per_second)]
    pub rate_limit: f64,
    /// Requests a client may make at once above its rate
    #[arg(long, default_value_t = Limits::default().burst)]
    pub burst: f64,
    /// Photos one client (address, or IPv6 /64) may have in progress at once
    #[arg(long, default_value_t = Limits::default().in_flight_per_client)]
    pub max_in_flight_per_client: usize,
    /// Open connections at once (more are closed on accept)
    #[arg(long, default_value_t = Limits::default().connections)]
    pub max_connections: usize,
    /// Longest wait for a request's head or, on an idle connection, the next request, seconds
    #[arg(long, default_value_t = Limits::default().header_timeout.as_secs_f64())]
    pub header_timeout_seconds: f64,
    /// Slowest accepted upload, bytes per second on average after its first 5 s (0: any)
    #[arg(long, default_value_t = Limits::default().min_upload_rate)]
    pub min_upload_rate: f64,
    /// After SIGTERM, longest wait for requests in flight, seconds
    #[arg(long, default_value_t = Limits::default().shutdown_grace.as_secs_f64())]
    pub shutdown_grace_seconds: f64,
}

/// Seconds as a duration; zero for what `Duration` cannot hold (negative,
/// infinite, NaN), which `Limits::validate` then refuses.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

impl LimitArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let limits = Limits {
            body_bytes: self.max_body_bytes,
            pixels: self.max_pixels,
            request_timeout: seconds(self.timeout_seconds),
            in_flight: self.max_in_flight,
            workers: self.workers.unwrap_or(Limits::default().workers),
            rate_per_second: self.rate_limit,
            burst: self.burst,
            in_flight_per_client: self.max_in_flight_per_client,
            connections: self.max_connections,
            header_timeout: seconds(self.header_timeout_seconds),
            min_upload_rate: self.min_upload_rate,
            shutdown_grace: seconds(self.shutdown_grace_seconds),
        };
        Ok(limits.validate()?)
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config {
        listen: args.listen,
        limits: args.limits.limits()?,
        // From the environment only, so that it shows neither in `ps` nor in shell history.
        admin_token: std::env::var("FRUITS_ADMIN_TOKEN").ok(),
        trusted_proxies: args.trust_forwarded_for,
        admin_listen: args.admin_listen,
    };
    let source = ModelSource {
        uri: args.model,
        backbone_dir: args.backbone.resolve(),
        min_confidence: args.min_confidence,
    };
    fruits_serve::serve(config, source).await?;
    Ok(ExitCode::SUCCESS)
}
