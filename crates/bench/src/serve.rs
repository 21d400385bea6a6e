//! `fruits bench serve`: a load test of the running service on 127.0.0.1,
//! with held-out studio shots and composed 12 MP phone-like photos, and in
//! the same run the reference of calling `fruits_serve::identify::identify`
//! directly, one photo at a time, without HTTP.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fruits_catalog::Lang;
use fruits_serve::identify::{identify, Ask};
use fruits_serve::{start, AppState, Config, Limits, ModelSource};
use image::RgbImage;
use serde::Serialize;

use crate::labelled::{list_labelled, read, spread};
use crate::scene::{compose, jpeg, Placement};
use crate::Error;

#[derive(Debug, Clone)]
pub struct ServeBenchOptions {
    /// Labelled images the model was not trained on (`<class>/<image>`).
    pub images: PathBuf,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests per scenario (after a warm-up).
    pub requests: usize,
    /// Time cap per scenario.
    pub seconds: f64,
    /// Distinct composed photos per photo scenario.
    pub photos: usize,
    pub limits: Limits,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub requests: usize,
    pub failed: usize,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Mean time of a direct call, one at a time, no HTTP: the reference.
    pub direct_ms: f64,
    /// Views the model looked at per photo.
    pub views: f64,
    /// Share of answers whose top class is right (one of the fruits, for two).
    pub right: f64,
    /// Share of photos whose `regions` name every fruit in them (photos of two fruits).
    pub all_found: Option<f64>,
    /// Share of answers marked confident.
    pub confident: f64,
    /// Share of the confident answers that are right: how far a name shown
    /// without "not sure" can be trusted.
    pub right_when_confident: f64,
}

/// A request body and what it shows.
pub(crate) struct Case {
    pub(crate) body: Bytes,
    labels: Vec<String>,
}

pub async fn run(source: ModelSource, opts: &ServeBenchOptions) -> Result<Vec<Row>, Error> {
    let labelled = list_labelled(&opts.images)?;
    let limits = Limits {
        rate_per_second: 0.0,
        ..opts.limits
    };
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        limits,
        admin_token: None,
        trusted_proxies: Vec::new(),
        admin_listen: None,
    };
    let running = start(config, source).await?;
    let url = format!("http://{}/v1/identify", running.addr);
    let scenarios = [
        ("100×100 studio shot", studio_cases(&labelled, 256)?),
        ("12 MP photo, one fruit", photo_cases(&labelled, opts.photos, 1)?),
        ("12 MP photo, two fruits", photo_cases(&labelled, opts.photos, 2)?),
    ];
    let mut rows = Vec::new();
    for (name, cases) in scenarios {
        let cases = Arc::new(cases);
        let (direct_ms, views) = direct(&running.state, &cases).await;
        let mut row = load(&url, cases, opts).await;
        row.scenario = name.into();
        row.direct_ms = direct_ms;
        row.views = views;
        rows.push(row);
    }
    running.stop().await?;
    Ok(rows)
}

fn studio_cases(labelled: &[(String, PathBuf)], n: usize) -> Result<Vec<Case>, Error> {
    spread(labelled, n)
        .into_iter()
        .map(|(label, path)| {
            Ok(Case {
                body: read(path)?.into(),
                labels: vec![label.clone()],
            })
        })
        .collect()
}

/// 4032 × 3024 photos with `fruits` fruits of different kinds each; every
/// other one stored sideways with an EXIF orientation, as phones do.
pub(crate) fn photo_cases(labelled: &[(String, PathBuf)], n: usize, fruits: usize) -> Result<Vec<Case>, Error> {
    let picks = spread(labelled, n * fruits + 7);
    let mut cases = Vec::new();
    for i in 0..n {
        let mut chosen: Vec<(&String, RgbImage)> = Vec::new();
        for k in 0..fruits {
            let (label, path) = picks[(i + k * n + k * 3) % picks.len()];
            let image = fruits_preprocess::decode(&read(path)?)
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
            chosen.push((label, image));
        }
        let places: Vec<Placement> = chosen
            .iter()
            .enumerate()
            .map(|(k, (_, image))| Placement {
                fruit: image,
                centre: centre_of(i, k, fruits),
                side: if fruits == 1 { 0.45 } else { 0.4 },
            })
            .collect();
        let scene = compose(4032, 3024, i as u64 + 1, &places);
        let body = if i % 2 == 1 {
            let sideways = image::imageops::rotate270(&scene);
            fruits_preprocess::photo::with_exif_orientation(&jpeg(&sideways, 90), 6)
        } else {
            jpeg(&scene, 90)
        };
        cases.push(Case {
            body: body.into(),
            labels: chosen.iter().map(|(l, _)| (*l).clone()).collect(),
        });
    }
    Ok(cases)
}

/// Off-centre placements: one fruit anywhere, two fruits left and right.
fn centre_of(i: usize, k: usize, fruits: usize) -> (f32, f32) {
    let jitter = |s: usize| ((i * 37 + s * 11) % 10) as f32 / 10.0;
    if fruits == 1 {
        (0.25 + 0.5 * jitter(0), 0.3 + 0.4 * jitter(1))
    } else {
        (0.25 + 0.5 * k as f32, 0.35 + 0.3 * jitter(k))
    }
}

/// Mean time and views of direct calls on (up to 32 of) the cases.
async fn direct(state: &AppState, cases: &Arc<Vec<Case>>) -> (f64, f64) {
    let model = state.model.current();
    let catalog = state.catalog;
    let ask = Ask {
        lang: Lang::En,
        top: 5,
        regions: true,
        localise: true,
        max_pixels: state.limits.pixels,
    };
    let cases = cases.clone();
    tokio::task::spawn_blocking(move || {
        let n = cases.len().min(32);
        let _ = identify(&model, catalog, &cases[0].body, &ask);
        let start = Instant::now();
        let mut views = 0;
        for case in &cases[..n] {
            views += identify(&model, catalog, &case.body, &ask).map_or(0, |a| a.views);
        }
        (start.elapsed().as_secs_f64() * 1e3 / n as f64, views as f64 / n as f64)
    })
    .await
    .unwrap_or((f64::NAN, f64::NAN))
}

#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    failed: usize,
    right: usize,
    confident: usize,
    right_confident: usize,
    all_found: usize,
}

/// `clients` closed-loop clients cycling through the cases.
async fn load(url: &str, cases: Arc<Vec<Case>>, opts: &ServeBenchOptions) -> Row {
    let client = reqwest::Client::new();
    for case in cases.iter().take(opts.clients * 2) {
        let _ = post(&client, url, case).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.clients.max(1) {
        let (client, url, cases, next, tally) = (
            client.clone(),
            url.to_string(),
            cases.clone(),
            next.clone(),
            tally.clone(),
        );
        let total = opts.requests;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    break;
                }
                let case = &cases[i % cases.len()];
                let t = Instant::now();
                let answer = post(&client, &url, case).await;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                tally.latencies.push(ms);
                match answer {
                    Some((right, confident, all_found)) => {
                        tally.right += usize::from(right);
                        tally.all_found += usize::from(all_found);
                        tally.confident += usize::from(confident);
                        tally.right_confident += usize::from(right && confident);
                    }
                    None => tally.failed += 1,
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let tally = Arc::try_unwrap(tally).map_or_else(|_| Tally::default(), |m| m.into_inner().unwrap_or_default());
    let mut lat = tally.latencies;
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    let pct = |p: f64| {
        lat.get(
            ((p * n as f64).ceil() as usize)
                .saturating_sub(1)
                .min(n.saturating_sub(1)),
        )
        .copied()
        .unwrap_or(f64::NAN)
    };
    let ok = (n - tally.failed).max(1) as f64;
    Row {
        scenario: String::new(),
        requests: n,
        failed: tally.failed,
        requests_per_second: n as f64 / wall,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        direct_ms: f64::NAN,
        views: f64::NAN,
        right: tally.right as f64 / ok,
        confident: tally.confident as f64 / ok,
        right_when_confident: tally.right_confident as f64 / tally.confident.max(1) as f64,
        all_found: (cases.iter().any(|c| c.labels.len() > 1)).then(|| tally.all_found as f64 / ok),
    }
}

/// `(right, confident, all found)` of one answer, `None` when the request failed.
async fn post(client: &reqwest::Client, url: &str, case: &Case) -> Option<(bool, bool, bool)> {
    let response = client
        .post(url)
        .header("content-type", "image/jpeg")
        .body(case.body.clone())
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
    let confident = answer["confident"].as_bool().unwrap_or(false);
    let top = answer["predictions"][0]["label"].as_str().unwrap_or_default();
    let right = case.labels.iter().any(|l| l == top);
    let found: Vec<&str> = answer["regions"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["label"].as_str()).collect())
        .unwrap_or_default();
    let all_found = case.labels.len() > 1 && case.labels.iter().all(|l| found.contains(&l.as_str()));
    Some((right, confident, all_found))
}
