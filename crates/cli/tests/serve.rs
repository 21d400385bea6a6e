//! `fruits serve` over real HTTP: a model bundle trained by `fruits run` on 12
//! classes, real held-out images, every endpoint and every bad input; and the
//! web page in a real browser: headless Chromium from Debian driven by
//! Playwright (`tests/browser/identify.cjs`), on a phone-sized screen, in
//! English and French, screenshots kept in `out/test-artifacts/`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{multipart, read_reply, start_upload, write_head, Server, ADMIN_TOKEN};
use common::{fruits, labelled_images, real_photos, run_ok, trained_run};
use fruits_bench::process::peak_rss_mib;

fn image_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn held_out_photos_are_named_with_facts_in_english_and_french() {
    let (run, test) = trained_run();
    let server = Server::start(run, &[]);
    let images = labelled_images(test, 2);
    let mut right = 0;
    for (label, path) in &images {
        let reply = server.post_image("/v1/identify", "image/jpeg", &image_bytes(path));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let answer = reply.json();
        let predictions = answer["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 5);
        let p: Vec<f64> = predictions.iter().map(|p| p["probability"].as_f64().unwrap()).collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]), "ranked: {p:?}");
        right += usize::from(predictions[0]["label"] == label.as_str());
        let fruit = &answer["fruit"];
        assert_eq!(fruit["label"], predictions[0]["label"]);
        // A studio shot: the gate hands it to the variety head, and the kind
        // shown first is the kind of the variety shown.
        let kind = &answer["kind"];
        let catalog = fruits_catalog::Catalog::embedded();
        let top_kind = &catalog.get(predictions[0]["label"].as_str().unwrap()).unwrap().kind;
        assert_eq!(kind["id"], top_kind.as_str(), "{answer}");
        assert!(kind["names"]["fr"].as_str().is_some_and(|n| !n.is_empty()), "{kind}");
        assert!(kind["probability"].as_f64().unwrap() >= predictions[0]["probability"].as_f64().unwrap() - 1e-6);
        assert!((1..=3).contains(&answer["kinds"].as_array().unwrap().len()));
        assert!(!answer["message"].as_str().unwrap().is_empty());
        assert!(fruit["per_100g"]["kcal"].as_f64().unwrap() > 0.0);
        assert!(!fruit["latin"].as_str().unwrap().is_empty());
        assert!(answer["confident"].is_boolean() && answer["threshold"].as_f64().unwrap() > 0.0);
        assert_eq!(answer["regions"].as_array().unwrap().len(), 0);
        assert_eq!(
            (answer["image"]["width"].as_u64(), answer["views"].as_u64()),
            (Some(100), Some(1))
        );
        assert!(answer["timings_ms"]["total"].as_f64().unwrap() > 0.0);
    }
    assert!(right + 1 >= images.len(), "{right} of {} right", images.len());

    // French names, from the query or from Accept-Language; multipart uploads agree.
    let (label, path) = &images[0];
    let fr = server
        .get(&format!("/v1/fruits/{}?lang=fr", label.replace(' ', "%20")))
        .json();
    let en = server.get(&format!("/v1/fruits/{}", label.replace(' ', "%20"))).json();
    assert_ne!(fr["name"], en["name"], "{label} has a French name");
    assert_ne!(fr["description"], en["description"], "and a French description");
    let by_query = server
        .post_image("/v1/identify?lang=fr&top=3", "image/jpeg", &image_bytes(path))
        .json();
    assert_eq!(by_query["predictions"].as_array().unwrap().len(), 3);
    assert_eq!(by_query["predictions"][0]["name"], fr["name"]);
    let by_header = server
        .send(
            "POST",
            "/v1/identify",
            &[
                ("content-type", "image/jpeg"),
                ("accept-language", "fr-FR,fr;q=0.9,en;q=0.5"),
            ],
            &image_bytes(path),
        )
        .json();
    assert_eq!(by_header["fruit"]["name"], fr["name"]);
    let (content_type, body) = multipart("image", "IMG_0001.jpg", "image/jpeg", &image_bytes(path));
    let by_form = server.post_image("/v1/identify", &content_type, &body).json();
    assert_eq!(by_form["predictions"][0]["label"], label.as_str());
}

/// Floors on the grocery-store `val` photos for the [`trained_run`] model
/// (12 studio classes, the `train` photos and 4 views of each), a little
/// under what it scored when they were set, the answer being the mean of the
/// whole photo and its grid views: top-1 87.0 %, top-3 96.9 %, confident
/// 61.7 %, right when confident 99.0 % (one photo is 0.6 %). The same code
/// scored top-1 84.6 % on CI's machine: ONNX Runtime's kernels differ by CPU,
/// the features by a hair, and the 6 cantaloupes (no cantaloupe among the 12
/// studio classes; kiwi is) sit on the kiwi border (2 of 6 right here, none
/// there). A floor is what every machine must reach, so top-1's sits 4 photos
/// under CI's figure. With the localiser (the views where it finds fruit),
/// here: top-1 84.6 %, top-3 98.1 %, confident 56.8 %, right when confident
/// 97.8 %. With the int8 backbone (the default since issue 13), here:
/// top-1 85.8 %, top-3 96.3 %, confident 54.9 %, right when confident
/// 97.8 %; int8 kernels differ more between CPUs than fp32 ones, so the
/// floors sit 5 to 8 photos under these.
const VAL_TOP1: f64 = 0.82;
const VAL_TOP3: f64 = 0.93;
const VAL_RIGHT_WHEN_CONFIDENT: f64 = 0.95;
const VAL_CONFIDENT: f64 = 0.50;
/// Ceiling on the photos without fruit (scripts/non-fruit-photos, 33) named
/// with confidence by the same model: none when set (2 of 33 when the whole
/// photo alone answered).
const NOT_FRUIT_CONFIDENT: f64 = 0.07;

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn real_photos_get_their_kind_first_and_val_holds_its_floors() {
    let (run, _) = trained_run();
    let out = run_ok(
        fruits()
            .args(["bench", "photos", "--json", "--model"])
            .arg(run)
            .arg("--input")
            .arg(real_photos("val"))
            .arg("--not-fruit")
            .arg(common::non_fruit_photos()),
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["photos"], 162, "{r}");
    let not_fruit = &r["not_fruit"];
    eprintln!("photos without fruit: {not_fruit}");
    assert_eq!(not_fruit["photos"], 33, "{r}");
    assert!(not_fruit["confident"].as_f64().unwrap() <= NOT_FRUIT_CONFIDENT, "{r}");
    let figure = |name: &str| r[name].as_f64().unwrap();
    eprintln!(
        "val: top-1 {:.3}, top-3 {:.3}, confident {:.3}, right when confident {:.3}",
        figure("top1"),
        figure("top3"),
        figure("confident"),
        figure("right_when_confident")
    );
    assert!(figure("top1") >= VAL_TOP1, "{r}");
    assert!(figure("top3") >= VAL_TOP3, "{r}");
    assert!(figure("right_when_confident") >= VAL_RIGHT_WHEN_CONFIDENT, "{r}");
    assert!(figure("confident") >= VAL_CONFIDENT, "{r}");

    // One photo through the API: the kind leads, in both languages.
    let server = Server::start(run, &[]);
    let banana = std::fs::read_dir(real_photos("val").join("banana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    for (lang, name) in [("en", "Banana"), ("fr", "Banane")] {
        let answer = server
            .post_image(
                &format!("/v1/identify?lang={lang}"),
                "image/jpeg",
                &image_bytes(&banana),
            )
            .json();
        assert_eq!(answer["kind"]["id"], "banana", "{answer}");
        assert_eq!(answer["kind"]["name"], name, "{answer}");
        assert_eq!(answer["kind"]["names"]["fr"], "Banane");
        assert!(answer["kind"]["per_100g"]["kcal"].as_f64().unwrap() > 0.0);
        assert_eq!(answer["kinds"][0]["id"], "banana");
        assert_eq!(answer["not_a_fruit"], false, "{answer}");
    }

    // `fruits predict` answers the kind first too, on the whole photo.
    let predicted = run_ok(fruits().args(["predict", "--json", "--model"]).arg(run).arg(&banana));
    let line: serde_json::Value = serde_json::from_slice(&predicted.stdout).unwrap();
    assert_eq!(line["kinds"][0]["label"], "banana", "{line}");
    let kind_of_top = line["top"][0]["label"].as_str().unwrap();
    assert!(kind_of_top.starts_with("Banana"), "varieties within the kind: {line}");

    // A face is not a fruit, whatever the fruit classifiers make of it.
    let face = server
        .post_image(
            "/v1/identify",
            "image/png",
            &image_bytes(&common::non_fruit_photos().join("scikit-image-astronaut.png")),
        )
        .json();
    assert_eq!(face["confident"], false, "{face}");
    assert_eq!(face["not_a_fruit"], true, "{face}");
    assert_eq!(
        face["message"], "Not sure: this does not look like a fruit we know",
        "{face}"
    );
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn a_50_mp_strip_is_looked_at_in_a_handful_of_views_with_bounded_memory() {
    use image::ImageEncoder;
    // 448 × 111,607 RGBA (50 MP, under the pixel limit), stripes so that it
    // is not one flat colour; zlib makes it small.
    let (w, h) = (448u32, 111_607u32);
    let strip = image::RgbaImage::from_fn(w, h, |x, y| {
        let band = ((y / 300) % 3) as u8;
        image::Rgba([80 * band, (x % 256) as u8, 200, 255])
    });
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Sub,
    )
    .write_image(strip.as_raw(), w, h, image::ExtendedColorType::Rgba8)
    .unwrap();
    drop(strip);
    eprintln!("strip PNG: {} KB", png.len() / 1024);

    let (run, test) = trained_run();
    let server = Server::start(run, &[]);
    let (_, photo) = &labelled_images(test, 1)[0];
    // Warm: the model's own buffers are in the baseline.
    server
        .post_image("/v1/identify", "image/jpeg", &image_bytes(photo))
        .json();
    let before = peak_rss_mib(server.child.id());
    assert!(before > 0.0, "the server's /proc status is readable");
    let start = std::time::Instant::now();
    let answer = server.post_image("/v1/identify", "image/png", &png).json();
    let seconds = start.elapsed().as_secs_f64();
    let grown = peak_rss_mib(server.child.id()) - before;
    eprintln!(
        "strip: {seconds:.2} s, {} views, peak RSS +{grown:.0} MiB",
        answer["views"]
    );
    assert_eq!(answer["image"]["height"], h, "{answer}");
    // The localiser finds no fruit in the random strip: 1 view; the grid
    // would look at 4 × 2 parts besides.
    let views = answer["views"].as_u64().unwrap();
    assert!(
        (1..=9).contains(&views),
        "the whole strip and at most 4 × 2 parts: {views}"
    );
    // 200 MB of RGBA pixels, converted in place; no copy of the whole image.
    assert!(grown < 300.0, "peak RSS grew by {grown:.0} MiB");
    // The issue asks for 2 s; 5 s leaves room for a loaded 2-core CI machine.
    assert!(seconds < 5.0, "{seconds:.2} s");
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn a_12_mp_phone_photo_held_sideways_is_decoded_oriented_and_looked_at_in_parts() {
    let (run, test) = trained_run();
    let server = Server::start(run, &[]);
    let (_, path) = &labelled_images(test, 1)[0];
    let fruit = fruits_preprocess::decode(&image_bytes(path)).unwrap();
    let place = fruits_bench::scene::Placement {
        fruit: &fruit,
        centre: (0.3, 0.4),
        side: 0.45,
    };
    let scene = fruits_bench::scene::compose(4032, 3024, 3, &[place]);
    // Stored as the sensor saw it (portrait) with "rotate 90° clockwise" in EXIF.
    let stored = image::imageops::rotate270(&scene);
    let jpeg = fruits_preprocess::photo::with_exif_orientation(&fruits_bench::scene::jpeg(&stored, 90), 6);
    let answer = server.post_image("/v1/identify", "image/jpeg", &jpeg).json();
    assert_eq!(
        (answer["image"]["width"].as_u64(), answer["image"]["height"].as_u64()),
        (Some(4032), Some(3024))
    );
    // The whole photo, a view of the fruit, and the grid views mostly fruit
    // (the grid alone: the whole photo and 3 × 2).
    let views = answer["views"].as_u64().unwrap();
    assert!((2..=7).contains(&views), "{answer}");
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 5);
    let one_view = server
        .post_image("/v1/identify?regions=false", "image/jpeg", &jpeg)
        .json();
    assert_eq!(one_view["views"], 1);
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn catalogue_health_readiness_metrics_and_openapi() {
    let (run, test) = trained_run();
    let server = Server::start(run, &[]);
    let all = server.get("/v1/fruits?lang=fr").json();
    let fruits = all["fruits"].as_array().unwrap();
    assert_eq!(fruits.len(), 131);
    assert!(fruits.iter().all(|f| f["per_100g"]["kcal"].as_f64().unwrap() > 0.0));
    let braeburn = server.get("/v1/fruits/Apple%20Braeburn%201?lang=fr").json();
    assert_eq!(braeburn["latin"], "Malus domestica");
    assert!(braeburn["name"].as_str().unwrap().contains("Pomme"), "{braeburn}");
    server.get("/v1/fruits/Durian%209").assert_error(404, "unknown_fruit");

    assert_eq!(server.get("/healthz").json()["status"], "ok");
    let ready = server.get("/readyz").json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["classes"], 12);
    assert_eq!(
        ready["threshold_source"], "calibrated",
        "fruits run calibrates the threshold"
    );

    let (_, path) = &labelled_images(test, 1)[0];
    assert_eq!(
        server
            .post_image("/v1/identify", "image/jpeg", &image_bytes(path))
            .status,
        200
    );
    server
        .post_image("/v1/identify", "image/jpeg", b"")
        .assert_error(400, "empty_body");
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let text = metrics.text();
    for needle in [
        "fruits_http_requests_total{route=\"/v1/identify\",status=\"200\"} 1",
        "fruits_http_errors_total{code=\"empty_body\"} 1",
        "fruits_identify_seconds_count 1",
        "fruits_identify_in_flight 0",
        "fruits_model_info{model=",
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }

    let api = server.get("/openapi.json").json();
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/identify",
        "/v1/fruits",
        "/v1/fruits/{label}",
        "/v1/admin/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(api["paths"][path].is_object(), "{path} documented");
    }
    assert!(api["components"]["schemas"]["Identification"].is_object());

    let page = server.get("/");
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("capture=\"environment\"") && html.contains("accept=\"image/*\""));
    // No external resource: the only absolute URL is the SVG namespace, which is a name, not a fetch.
    let urls = html.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !urls.contains("http://") && !urls.contains("https://"),
        "no external resource"
    );
    assert!(page.header("content-security-policy").is_some());
}

/// A PNG whose header claims `width × height` (the pixel data is never reached).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn bad_input_gets_a_json_4xx_and_the_service_carries_on() {
    let (run, test) = trained_run();
    let server = Server::start(run, &["--max-body-bytes", "5000000", "--max-pixels", "40000000"]);
    let (_, path) = &labelled_images(test, 1)[0];
    let good = image_bytes(path);

    server
        .post_image("/v1/identify", "image/jpeg", b"")
        .assert_error(400, "empty_body");
    server
        .post_image("/v1/identify", "image/jpeg", b"hello, I am a text file")
        .assert_error(422, "not_an_image");
    server
        .post_image("/v1/identify", "image/jpeg", &good[..good.len() / 2])
        .assert_error(422, "corrupt_image");
    server
        .post_image("/v1/identify", "image/png", &png_claiming(100_000, 100_000))
        .assert_error(422, "too_many_pixels");
    server
        .post_image("/v1/identify", "text/plain", &good)
        .assert_error(415, "unsupported_media_type");
    server
        .send("POST", "/v1/identify", &[], &good)
        .assert_error(415, "unsupported_media_type");
    let (content_type, body) = multipart("photo", "x.jpg", "image/jpeg", &good);
    server
        .post_image("/v1/identify", &content_type, &body)
        .assert_error(400, "missing_image_field");
    let garbage = server.post_image("/v1/identify", "multipart/form-data; boundary=x", b"garbage");
    assert_eq!(garbage.status, 400, "{}", garbage.text());
    let code = garbage.json()["code"].as_str().unwrap().to_string();
    assert!(
        ["bad_multipart", "missing_image_field"].contains(&code.as_str()),
        "{code}"
    );
    server
        .post_image("/v1/identify?lang=de", "image/jpeg", &good)
        .assert_error(400, "bad_query");
    server
        .post_image("/v1/identify?top=0", "image/jpeg", &good)
        .assert_error(400, "bad_query");
    server.get("/nowhere").assert_error(404, "not_found");
    server.get("/v1/identify").assert_error(405, "method_not_allowed");

    // A declared 100 MB upload is refused from its headers, before any body is read.
    let mut stream = server.connect();
    write_head(
        &mut stream,
        "POST",
        "/v1/identify",
        &[("content-type", "image/jpeg")],
        Some(100 << 20),
    );
    read_reply(stream).assert_error(413, "body_too_large");
    // An undeclared (chunked) one is cut at the limit: written from another
    // thread, since the server answers (and closes) without reading it all.
    let mut stream = server.connect();
    write_head(
        &mut stream,
        "POST",
        "/v1/identify",
        &[("content-type", "image/jpeg"), ("transfer-encoding", "chunked")],
        None,
    );
    let mut writer = stream.try_clone().unwrap();
    let feeding = std::thread::spawn(move || {
        let chunk = vec![0xAB; 1 << 20];
        for _ in 0..8 {
            if write!(writer, "{:x}\r\n", chunk.len()).is_err() || writer.write_all(&chunk).is_err() {
                break;
            }
            let _ = writer.write_all(b"\r\n");
        }
    });
    read_reply(stream).assert_error(413, "body_too_large");
    let _ = feeding.join();

    // Still up, still right, and the photos never reached the log.
    assert_eq!(server.post_image("/v1/identify", "image/jpeg", &good).status, 200);
    let (content_type, body) = multipart("image", "holiday-secret-name.jpg", "image/jpeg", &good);
    assert_eq!(server.post_image("/v1/identify", &content_type, &body).status, 200);
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("route=\"/v1/identify\" status=200"),
        "requests are logged: {log}"
    );
    assert!(!log.contains("holiday-secret-name"), "file names are not logged");
    assert!(!log.contains("hello, I am"), "bodies are not logged");
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn mutated_uploads_never_get_a_5xx() {
    let (run, test) = trained_run();
    let server = Server::start(run, &["--rate-limit", "0"]);
    let seeds: Vec<Vec<u8>> = labelled_images(test, 1)
        .iter()
        .take(3)
        .map(|(_, p)| image_bytes(p))
        .collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..200 {
        let mut bytes = seeds[i % seeds.len()].clone();
        match next() % 3 {
            0 => bytes.truncate((next() % bytes.len() as u64) as usize),
            1 => {
                for _ in 0..1 + next() % 16 {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << (next() % 8);
                }
            }
            _ => {
                let at = (next() % bytes.len() as u64) as usize;
                let junk: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
                bytes.splice(at..at, junk);
            }
        }
        let reply = server.post_image("/v1/identify", "image/jpeg", &bytes);
        assert!(
            reply.status == 200 || (400..500).contains(&reply.status),
            "{}: {}",
            reply.status,
            reply.text()
        );
        if reply.status != 200 {
            assert!(reply.json()["code"].is_string());
        }
    }
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn rate_concurrency_and_time_limits_answer_429_and_503() {
    let (run, test) = trained_run();
    let (_, path) = &labelled_images(test, 1)[0];
    let good = image_bytes(path);

    let server = Server::start(run, &["--rate-limit", "1", "--burst", "2"]);
    assert_eq!(server.get("/v1/fruits").status, 200);
    assert_eq!(server.get("/v1/fruits").status, 200);
    let limited = server.get("/v1/fruits");
    limited.assert_error(429, "rate_limited");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(server.get("/healthz").status, 200, "health checks are not rate limited");
    drop(server);

    let server = Server::start(
        run,
        &["--max-in-flight", "1", "--timeout-seconds", "2", "--rate-limit", "0"],
    );
    // A slow upload holds the only place...
    let slow = server.begin_upload(&good, good.len() / 2);
    // ...so another photo is turned away at once,
    let busy = server.post_image("/v1/identify", "image/jpeg", &good);
    busy.assert_error(503, "busy");
    assert!(busy.header("retry-after").is_some());
    // and the stalled upload times out.
    read_reply(slow).assert_error(503, "timeout");
    assert_eq!(server.post_image("/v1/identify", "image/jpeg", &good).status, 200);
}

/// Reads until the server closes the connection; `None` if it is still
/// open after `wait`.
fn closed_within(stream: &mut std::net::TcpStream, wait: Duration) -> Option<Duration> {
    use std::io::Read;
    let start = Instant::now();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(start.elapsed()),
            Err(_) => return None,
        }
    }
}

/// 1,000, or fewer where the open-file limit cannot hold them (both ends of
/// each connection live on this machine): the soft limit is first raised to
/// the hard one (util-linux `prlimit`; the server inherits it).
fn half_sent_count() -> usize {
    let pid = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("prlimit --pid {pid} --nofile=$(ulimit -Hn):"))
        .status();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let n = 1000.min(soft.saturating_sub(200));
    eprintln!("{n} half-sent requests (open-file limit {soft})");
    n
}

/// `GET /healthz` on a new connection: its status and how long it took.
fn health(server: &Server) -> (u16, Duration) {
    let start = Instant::now();
    let status = server.get("/healthz").status;
    (status, start.elapsed())
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn half_sent_requests_and_slow_uploads_are_cut_off_and_other_clients_still_served() {
    let (run, test) = trained_run();
    let (_, path) = &labelled_images(test, 1)[0];
    let good = image_bytes(path);
    let n = half_sent_count();
    let server = Server::start(
        run,
        &[
            "--header-timeout-seconds",
            "2",
            "--rate-limit",
            "0",
            "--timeout-seconds",
            "60",
        ],
    );
    // 1,000 connections that never finish their request head.
    let mut half_sent: Vec<std::net::TcpStream> = (0..n)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"POST /v1/identify HTTP/1.1\r\nhost: test\r\ncontent-type: image/jpeg\r\n")
                .unwrap();
            s
        })
        .collect();
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_millis(1500) {
        let (status, took) = health(&server);
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_secs(1),
            "/healthz took {took:?} beside {n} half-sent requests"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, s) in half_sent.iter_mut().enumerate() {
        let left = Duration::from_secs(4).saturating_sub(opened.elapsed()) + Duration::from_millis(100);
        assert!(
            closed_within(s, left).is_some(),
            "half-sent request {i} still open 4 s after its start"
        );
    }
    assert_eq!(health(&server).0, 200);
    // An idle keep-alive connection is closed by the same timeout.
    let mut idle = server.connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).is_some(),
        "the idle connection stayed open"
    );

    // 32 stalled uploads from one address take only its share of places
    // (8 of 32): the rest are turned away, and a photo from another
    // address is answered at once.
    let stalled: Vec<std::net::TcpStream> = (0..32)
        .map(|_| start_upload(server.connect(), &good, good.len() / 2))
        .collect();
    let began = Instant::now();
    while server.photos_in_progress() < 8 {
        assert!(began.elapsed() < Duration::from_secs(10), "the uploads never began");
        std::thread::sleep(Duration::from_millis(20));
    }
    let other = start_upload(server.connect_from("127.0.0.2".parse().unwrap()), &good, good.len());
    let asked = Instant::now();
    assert_eq!(read_reply(other).status, 200, "another client's photo is answered");
    assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());
    // The stalled uploads end: 8 with 408 once under the least upload rate
    // (after its 5 s grace), 24 turned away as busy at once.
    let mut codes: Vec<(u16, String)> = stalled
        .into_iter()
        .map(|s| {
            let r = read_reply(s);
            (r.status, r.json()["code"].as_str().unwrap().to_string())
        })
        .collect();
    codes.sort();
    let count = |code: &str| codes.iter().filter(|(_, c)| c == code).count();
    assert_eq!((count("upload_too_slow"), count("busy")), (8, 24), "{codes:?}");
    assert!(codes.iter().any(|(s, c)| *s == 408 && c == "upload_too_slow"));
    assert!(began.elapsed() < Duration::from_secs(15), "{:?}", began.elapsed());
    assert_eq!(server.photos_in_progress(), 0);
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn connections_over_the_cap_are_closed_on_accept_and_counted() {
    let (run, _) = trained_run();
    let server = Server::start(run, &["--max-connections", "4", "--header-timeout-seconds", "30"]);
    let mut held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let mut fifth = server.connect();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(5)).is_some(),
        "a connection over the cap is closed"
    );
    // One held connection goes: the service answers again, and says why it refused.
    drop(held.pop());
    let start = Instant::now();
    let refused = loop {
        let mut s = server.connect();
        write_head(&mut s, "GET", "/metrics", &[], None);
        let mut text = String::new();
        use std::io::Read;
        let _ = s.read_to_string(&mut text);
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("fruits_connections_refused_total "))
        {
            break line[33..].trim().parse::<u64>().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/metrics never answered: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refused >= 1, "{refused}");
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn metrics_readiness_and_reload_move_to_the_admin_listener_when_given_one() {
    let (run, _) = trained_run();
    let server = Server::start(run, &["--admin-listen", "127.0.0.1:0"]);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let token = [("authorization", bearer.as_str())];
    // The public listener: the app's routes, and nothing about the service's state.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/v1/fruits").status, 200);
    server.get("/metrics").assert_error(404, "not_found");
    server
        .send("POST", "/v1/admin/reload", &token, b"")
        .assert_error(404, "not_found");
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json(),
        serde_json::json!({"status": "ready"}),
        "nothing but ready or draining"
    );
    // The admin listener: metrics, full readiness, reload.
    let metrics = server.admin("GET", "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("fruits_identify_in_flight "),
        "{}",
        metrics.text()
    );
    let ready = server.admin("GET", "/readyz", &[]).json();
    assert!(ready["model"].as_str().is_some_and(|m| !m.is_empty()), "{ready}");
    assert_eq!(server.admin("POST", "/v1/admin/reload", &token).status, 200);
    assert_eq!(server.admin("GET", "/healthz", &[]).status, 200);
    server.admin("GET", "/v1/fruits", &[]).assert_error(404, "not_found");
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn a_trusted_proxy_names_the_client_and_ipv6_counts_by_its_64() {
    let (run, _) = trained_run();
    let ask = |server: &Server, forwarded: &str| {
        server
            .send("GET", "/v1/fruits", &[("x-forwarded-for", forwarded)], b"")
            .status
    };
    // Not trusted: the header is ignored, every request is the peer's.
    let server = Server::start(run, &["--rate-limit", "0.01", "--burst", "1"]);
    assert_eq!(ask(&server, "198.51.100.1"), 200);
    assert_eq!(ask(&server, "198.51.100.2"), 429, "a client cannot pick who it is");
    drop(server);

    let server = Server::start(
        run,
        &[
            "--rate-limit",
            "0.01",
            "--burst",
            "1",
            "--trust-forwarded-for",
            "127.0.0.0/8",
        ],
    );
    assert_eq!(ask(&server, "198.51.100.1"), 200);
    assert_eq!(ask(&server, "198.51.100.1"), 429);
    assert_eq!(ask(&server, "198.51.100.2"), 200, "another client behind the proxy");
    // Read from the right: what the client wrote on the left does not count.
    assert_eq!(ask(&server, "203.0.113.5, 198.51.100.1"), 429);
    // One IPv6 /64 is one client; the next /64 is another.
    assert_eq!(ask(&server, "2001:db8:0:1::a"), 200);
    assert_eq!(ask(&server, "2001:db8:0:1:ffff::b"), 429);
    assert_eq!(ask(&server, "2001:db8:0:2::a"), 200);
    let bad = fruits()
        .args(["serve", "--model"])
        .arg(run)
        .args(["--trust-forwarded-for", "10.0.0.0/33"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("'10.0.0.0/33' is not an address range"), "{stderr}");
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn scan_bombs_are_refused_at_once_and_sigterm_ends_within_the_grace() {
    let (run, test) = trained_run();
    let (_, path) = &labelled_images(test, 1)[0];
    let good = image_bytes(path);
    // The photo's one scan (SOS to EOI) repeated: 300 scans where a
    // progressive JPEG has about 10 (a bomb's shape; the decoder would
    // refine the image 300 times over).
    let sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let mut bomb = good[..sos].to_vec();
    for _ in 0..300 {
        bomb.extend_from_slice(&good[sos..good.len() - 2]);
    }
    bomb.extend_from_slice(&[0xFF, 0xD9]);
    let server = Server::start(
        run,
        &[
            "--workers",
            "2",
            "--rate-limit",
            "0",
            "--shutdown-grace-seconds",
            "2",
            "--min-upload-rate",
            "0",
            "--timeout-seconds",
            "120",
        ],
    );
    let sent = Instant::now();
    let reply = server.post_image("/v1/identify", "image/jpeg", &bomb);
    let took = sent.elapsed();
    reply.assert_error(422, "corrupt_image");
    assert!(
        reply.json()["error"].as_str().unwrap().contains("300 scans"),
        "{}",
        reply.text()
    );
    eprintln!("a {} KB scan bomb refused in {took:?}", bomb.len() / 1000);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // As many bombs as workers at once, and a photo: answered within 1 s.
    let bombs: Vec<_> = (0..2)
        .map(|_| start_upload(server.connect(), &bomb, bomb.len()))
        .collect();
    let asked = Instant::now();
    assert_eq!(server.post_image("/v1/identify", "image/jpeg", &good).status, 200);
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    for s in bombs {
        assert_eq!(read_reply(s).status, 422);
    }

    // SIGTERM with an upload stalled mid-body (it would hold its request
    // for 120 s): the process ends within the 2 s grace, plus a margin.
    let _stalled = server.begin_upload(&good, good.len() / 2);
    let pid = server.child.id();
    let mut server = server;
    let term = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            term.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The log reader thread drains the closed pipe.
    let warned = || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("after the shutdown grace period"))
    };
    let drained = Instant::now();
    while !warned() {
        assert!(
            drained.elapsed() < Duration::from_secs(5),
            "{:?}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn bench_photos_scores_kinds_on_real_photos_and_refuses_unknown_folders() {
    let (run, _) = trained_run();
    let tmp = tempfile::tempdir().unwrap();
    // Two kinds of real grocery-store photos, linked, not copied.
    let count = common::link_real_photos("val", &["apple", "banana"], 3, tmp.path());
    let out = common::run_ok(
        common::fruits()
            .args(["bench", "photos", "--json", "--pairs", "3", "--model"])
            .arg(run)
            .arg("--input")
            .arg(tmp.path()),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["photos"], count);
    // Apple beside banana: at least one of the two leads every time.
    let pairs = &report["pairs"];
    assert_eq!(pairs["photos"], 3, "{report}");
    assert_eq!(pairs["either_top3"], 1.0, "{report}");
    for key in ["either_top1", "fruits_found", "both_found"] {
        let v = pairs[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(pairs["fruits_found"].as_f64() >= pairs["both_found"].as_f64());
    assert_eq!(report["refused"], 0);
    for key in ["top1", "top3", "confident", "right_when_confident"] {
        let v = report[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(report["top3"].as_f64() >= report["top1"].as_f64());
    assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    let kinds: Vec<&str> = report["per_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["apple", "banana"]);

    std::fs::create_dir_all(tmp.path().join("Banana 1")).unwrap();
    let bad = common::fruits()
        .args(["bench", "photos", "--model"])
        .arg(run)
        .arg("--input")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("'Banana 1' is not a kind of the catalogue"), "{stderr}");
}

/// Rewrites the bundle's logistic regression file with other formatting (the
/// same model, another sha256) and updates `bundle.json`: a new model id.
fn republish(model_dir: &Path, pretty: bool) -> String {
    let file = common::bundle_file(model_dir, "logistic_regression");
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let bytes = if pretty {
        serde_json::to_vec_pretty(&value).unwrap()
    } else {
        serde_json::to_vec(&value).unwrap()
    };
    let sha = fruits_common::sha256_hex(&bytes);
    std::fs::write(&file, &bytes).unwrap();
    let manifest_path = model_dir.join("bundle.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    for entry in manifest["classifiers"].as_array_mut().unwrap() {
        if entry[0] == "logistic_regression" {
            entry[1]["sha256"] = sha.clone().into();
        }
    }
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    sha[..12].to_string()
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn reload_swaps_the_model_without_dropping_requests_in_flight() {
    let (run, test) = trained_run();
    let copy = tempfile::tempdir().unwrap();
    let model_dir = copy.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for entry in std::fs::read_dir(run.join("model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model_dir.join(entry.file_name())).unwrap();
    }
    let (_, path) = &labelled_images(test, 1)[0];
    let good = image_bytes(path);
    let server = Server::start(&model_dir, &["--rate-limit", "0"]);
    let first = server.get("/readyz").json()["model"].as_str().unwrap().to_string();

    let reload = |token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        server.send("POST", "/v1/admin/reload", &headers, b"")
    };
    reload(None).assert_error(401, "unauthorized");
    reload(Some("wrong-token")).assert_error(401, "unauthorized");

    // A request in flight (its upload half sent) when the model is swapped...
    let mut in_flight = server.begin_upload(&good, 100);
    let second = republish(&model_dir, true);
    let swapped = reload(Some(ADMIN_TOKEN));
    assert_eq!(swapped.status, 200, "{}", swapped.text());
    assert_eq!(
        (swapped.json()["previous"].as_str(), swapped.json()["model"].as_str()),
        (Some(first.as_str()), Some(second.as_str()))
    );
    // ...finishes on the old model; the next one gets the new model.
    in_flight.write_all(&good[100..]).unwrap();
    let finished = read_reply(in_flight);
    assert_eq!(
        (finished.status, finished.json()["model"].as_str()),
        (200, Some(first.as_str()))
    );
    let next = server.post_image("/v1/identify", "image/jpeg", &good).json();
    assert_eq!(next["model"], second.as_str());

    // A damaged bundle is refused and the current model keeps answering.
    let pca = common::bundle_file(&model_dir, "pca");
    let good_pca = std::fs::read(&pca).unwrap();
    std::fs::write(&pca, b"{}").unwrap();
    reload(Some(ADMIN_TOKEN)).assert_error(503, "reload_failed");
    assert_eq!(
        server.post_image("/v1/identify", "image/jpeg", &good).json()["model"],
        second.as_str()
    );

    // A bundle.json whose digest is cut short (it used to panic the reload
    // task, after which SIGHUP did nothing) is refused by the API and by SIGHUP.
    std::fs::write(&pca, good_pca).unwrap();
    let manifest_path = model_dir.join("bundle.json");
    let good_manifest = std::fs::read(&manifest_path).unwrap();
    let mut short: serde_json::Value = serde_json::from_slice(&good_manifest).unwrap();
    short["backbone"]["onnx"]["sha256"] = "8d4654".into();
    std::fs::write(&manifest_path, serde_json::to_vec(&short).unwrap()).unwrap();
    let refused = reload(Some(ADMIN_TOKEN));
    refused.assert_error(503, "reload_failed");
    let hangup = || {
        let pid = server.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    hangup();
    let failed = |n: u32| format!("fruits_model_reloads_total{{outcome=\"failed\"}} {n}");
    let start = std::time::Instant::now();
    while !server.get("/metrics").text().contains(&failed(3)) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "SIGHUP never tried"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        server.post_image("/v1/identify", "image/jpeg", &good).json()["model"],
        second.as_str()
    );

    // SIGHUP still reloads once the bundle is whole again.
    std::fs::write(&manifest_path, good_manifest).unwrap();
    let third = republish(&model_dir, false);
    hangup();
    server.wait_ready(|r| r["model"] == third.as_str());
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("fruits_model_reloads_total{outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains(&failed(3)), "{metrics}");
}

fn browser_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))
        .join("tests/browser")
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("FRUITS_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| browser_dir().join("../../../../out/test-artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[ignore = "end-to-end: the installed model, and Chromium for the page; scripts/test runs it"]
fn the_page_names_an_uploaded_fruit_on_a_phone_screen_in_both_languages() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix {}` (scripts/test does)",
        dir.display()
    );
    let (run, _) = trained_run();
    let server = Server::start(run, &[]);
    // A real phone photo from `val` that the model names confidently.
    let image = std::fs::read_dir(real_photos("val").join("banana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let answer = server.post_image("/v1/identify", "image/jpeg", &image_bytes(p)).json();
            answer["kind"]["id"] == "banana" && answer["confident"] == true
        })
        .expect("a val banana named confidently");
    for lang in ["en", "fr"] {
        let name = if lang == "en" { "Banana" } else { "Banane" };
        let screenshot = artifacts().join(format!("web-{lang}.png"));
        let out = Command::new("node")
            .arg(dir.join("identify.cjs"))
            .arg(format!("http://{}", server.addr))
            .arg(&image)
            .arg(name)
            .arg(&screenshot)
            .arg(lang)
            .output()
            .expect("node runs (install Node.js)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{lang}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
        assert!(seen["top1"].as_str().unwrap().contains(name), "{seen}");
        assert_eq!(
            (seen["facts"].as_bool(), seen["overflow"].as_bool()),
            (Some(true), Some(false)),
            "{seen}"
        );
        assert!(
            std::fs::metadata(&screenshot).unwrap().len() > 10_000,
            "a real screenshot"
        );
    }
}
