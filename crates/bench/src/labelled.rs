//! Labelled image folders as the benchmarks read them: `DIR/<label>/<file>`,
//! local files (a benchmark's inputs sit beside it, not in the lake).

use std::path::{Path, PathBuf};

use crate::Error;

/// The label folders directly under `dir`, sorted (files beside them are skipped).
pub fn label_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let io = |e: std::io::Error| Error::Setup(format!("{}: {e}", dir.display()));
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(label) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
            continue;
        };
        if path.is_dir() {
            folders.push((label, path));
        }
    }
    folders.sort();
    Ok(folders)
}

/// `(label, path)` of every file under `dir/<label>/`, sorted; none is an error.
pub fn list_labelled(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let io = |e: std::io::Error| Error::Setup(format!("{}: {e}", dir.display()));
    let mut out = Vec::new();
    for (label, folder) in label_folders(dir)? {
        for file in std::fs::read_dir(&folder).map_err(io)? {
            out.push((label.clone(), file.map_err(io)?.path()));
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::Setup(format!("{}: no <label>/<image> files", dir.display())));
    }
    Ok(out)
}

/// Every image file directly in `dir` (by extension: jpg, jpeg, png, webp),
/// sorted; other files (a licence, a checksum list) are skipped; none is an error.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |e: std::io::Error| Error::Setup(format!("{}: {e}", dir.display()));
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["jpg", "jpeg", "png", "webp"].contains(&e.to_ascii_lowercase().as_str()))
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && is_image(&path) {
            out.push(path);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::Setup(format!("{}: no jpg, png or webp images", dir.display())));
    }
    Ok(out)
}

/// `n` entries spread evenly over the sorted list (so over the labels).
pub fn spread(labelled: &[(String, PathBuf)], n: usize) -> Vec<&(String, PathBuf)> {
    let step = (labelled.len() / n.max(1)).max(1);
    labelled.iter().step_by(step).take(n).collect()
}

pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}
