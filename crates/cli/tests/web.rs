//! The web page in a real browser: headless Chromium from Debian driven by
//! Playwright (`tests/browser/identify.cjs`), on a phone-sized screen, in
//! English and French. Screenshots are kept in `out/test-artifacts/`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::http::Server;
use common::{labelled_images, trained_run};

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
fn the_page_names_an_uploaded_fruit_on_a_phone_screen_in_both_languages() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix {}` (scripts/test does)",
        dir.display()
    );
    let (run, test) = trained_run();
    let server = Server::start(run, &[]);
    let (label, image) = labelled_images(test, 1)
        .into_iter()
        .find(|(label, _)| label == "Strawberry 1")
        .expect("a held-out strawberry");
    for lang in ["en", "fr"] {
        let facts = server
            .get(&format!("/v1/fruits/{}?lang={lang}", label.replace(' ', "%20")))
            .json();
        let name = facts["name"].as_str().unwrap();
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
