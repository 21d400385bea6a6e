//! `fruits serve`: the consumer API and web page.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use fruits_serve::{Config, Limits, ModelSource};

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
}

impl LimitArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        // `Duration` panics on negative, infinite or NaN seconds: refuse those here.
        let timeout = Duration::try_from_secs_f64(self.timeout_seconds).unwrap_or(Duration::ZERO);
        let limits = Limits {
            body_bytes: self.max_body_bytes,
            pixels: self.max_pixels,
            request_timeout: timeout,
            in_flight: self.max_in_flight,
            workers: self.workers.unwrap_or(Limits::default().workers),
            rate_per_second: self.rate_limit,
            burst: self.burst,
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
    };
    let source = ModelSource {
        uri: args.model,
        backbone_dir: args.backbone.resolve(),
        min_confidence: args.min_confidence,
    };
    fruits_serve::serve(config, source).await?;
    Ok(ExitCode::SUCCESS)
}
