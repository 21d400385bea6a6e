//! The int8 model's calibration set and its install step.
//!
//! The set is a fixed, seeded sample of training images from one or more
//! local folders (studio shots and real photos): each folder gives an equal
//! share, chosen by the sha256 of `seed` and the image's path relative to its
//! folder, so the same folders give the same set on every machine, whatever
//! order the file system lists them in. Its list (one `folder#/relative path`
//! per line) is hashed into the manifest.
//!
//! An image that cannot be decoded is left out with a warning: one bad file
//! never stops an install.

use std::path::{Path, PathBuf};

use fruits_backbone::install::{install_int8, installed_int8, Outcome};
use fruits_backbone::manifest::Calibration;
use fruits_backbone::Manifest;
use fruits_common::sha256_hex;
use fruits_preprocess::Spec;

use crate::Error;

/// The seed of the calibration sample: part of what the manifest records.
pub const SEED: u64 = 13;
/// Images prepared and run at once while calibrating.
const BATCH: usize = 16;

/// The chosen images, in order.
#[derive(Debug, Clone)]
pub struct CalibrationSet {
    pub images: Vec<PathBuf>,
    /// One `folder#/relative path` per line: what `list_sha256` hashes.
    pub list: String,
    pub seed: u64,
}

impl CalibrationSet {
    /// `count` images, an equal share from each folder (all of a folder
    /// that holds fewer), interleaved folder by folder.
    pub fn choose(folders: &[PathBuf], count: usize, seed: u64) -> Result<Self, Error> {
        if folders.is_empty() || count == 0 {
            return Err(Error::Calibration("give at least one folder and one image".into()));
        }
        let share = count.div_ceil(folders.len());
        let mut chosen = Vec::new();
        for (i, folder) in folders.iter().enumerate() {
            let mut found = images_under(folder)?;
            if found.is_empty() {
                return Err(Error::NoImages(folder.display().to_string()));
            }
            found.sort_by_cached_key(|rel| sha256_hex(format!("{seed}\n{rel}").as_bytes()));
            found.truncate(share);
            chosen.push(found.into_iter().map(move |rel| (i, folder.join(&rel), rel)));
        }
        let mut images = Vec::new();
        let mut list = String::new();
        let mut iters: Vec<_> = chosen.into_iter().collect();
        while images.len() < count {
            let before = images.len();
            for it in iters.iter_mut() {
                if let Some((i, path, rel)) = it.next() {
                    if images.len() < count {
                        list.push_str(&format!("{i}#/{rel}\n"));
                        images.push(path);
                    }
                }
            }
            if images.len() == before {
                break;
            }
        }
        Ok(Self { images, list, seed })
    }

    /// What the manifest records of this set, prepared at `size`.
    pub fn record(&self, size: u32) -> Calibration {
        Calibration {
            images: self.images.len(),
            seed: self.seed,
            size,
            list_sha256: sha256_hex(self.list.as_bytes()),
        }
    }

    /// Prepared batches; undecodable images are skipped with a warning.
    pub fn batches(
        &self,
        spec: Spec,
    ) -> impl Iterator<Item = Result<(Vec<f32>, [usize; 4]), fruits_backbone::Error>> + '_ {
        let side = spec.size as usize;
        self.images.chunks(BATCH).filter_map(move |chunk| {
            let mut input = Vec::with_capacity(chunk.len() * spec.len());
            let mut n = 0;
            for path in chunk {
                match prepare(path, &spec, &mut input) {
                    Ok(()) => n += 1,
                    Err(e) => tracing::warn!(path = %path.display(), "left out of calibration: {e}"),
                }
            }
            (n > 0).then_some(Ok((input, [n, 3, side, side])))
        })
    }
}

fn prepare(path: &Path, spec: &Spec, input: &mut Vec<f32>) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let before = input.len();
    fruits_preprocess::prepare(&bytes, spec, input).map_err(|e| {
        input.truncate(before);
        e.to_string()
    })
}

/// Image files under `folder`, as `/`-separated paths relative to it.
fn images_under(folder: &Path) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    let io = |p: &Path, e: std::io::Error| Error::Calibration(format!("{}: {e}", p.display()));
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(fruits_storage::is_image_name)
            {
                let rel = path.strip_prefix(folder).expect("under the folder");
                let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    Ok(out)
}

/// Makes the int8 model of the fp32 one installed in `model_dir`, calibrated
/// on `count` images from `folders`; nothing to do if it is already there
/// from the same set (unless `force`).
pub fn install(model_dir: &Path, folders: &[PathBuf], count: usize, force: bool) -> Result<Outcome, Error> {
    let fp32 = Manifest::load(model_dir)?;
    let set = CalibrationSet::choose(folders, count, SEED)?;
    let record = set.record(fp32.input.size);
    if !force {
        if let Some(m) = installed_int8(model_dir, &record) {
            return Ok(Outcome::AlreadyInstalled(m));
        }
    }
    let spec = Spec {
        size: fp32.input.size,
        mean: fp32.input.mean,
        std: fp32.input.std,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let m = install_int8(model_dir, record, threads, set.batches(spec))?;
    Ok(Outcome::Installed(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        dir
    }

    #[test]
    fn the_same_folders_give_the_same_set_and_each_folder_its_share() {
        let studio = folder(&["a/1.jpg", "a/2.jpg", "b/3.jpg", "b/4.png", "b/notes.txt"]);
        let photos = folder(&["x/9.jpeg", "y/8.JPG"]);
        let folders = [studio.path().to_path_buf(), photos.path().to_path_buf()];
        let one = CalibrationSet::choose(&folders, 4, SEED).unwrap();
        let two = CalibrationSet::choose(&folders, 4, SEED).unwrap();
        assert_eq!(one.list, two.list);
        assert_eq!(one.images.len(), 4);
        assert_eq!(one.list.lines().filter(|l| l.starts_with("0#/")).count(), 2);
        assert_eq!(one.list.lines().filter(|l| l.starts_with("1#/")).count(), 2);
        assert!(!one.list.contains("notes.txt"));
        let other = CalibrationSet::choose(&folders, 4, SEED + 1).unwrap();
        assert_eq!(other.record(224).images, 4);
        assert_ne!(
            one.record(224),
            CalibrationSet::choose(&folders, 3, SEED).unwrap().record(224)
        );
    }

    #[test]
    fn a_folder_without_images_is_a_clear_error() {
        let empty = folder(&["readme.txt"]);
        let err = CalibrationSet::choose(&[empty.path().to_path_buf()], 4, SEED).unwrap_err();
        assert!(err.to_string().contains("no images"), "{err}");
    }
}
