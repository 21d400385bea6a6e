//! The localiser: where the fruits are in a photo.
//!
//! One dense pass of the backbone over the whole photo (its longer side
//! [`Localiser::side`] pixels, the aspect kept) gives a feature map before
//! pooling: one 1280-d feature per 32 px cell. A binary classifier over the
//! bundle's PCA projection of each cell scores how much of a fruit the cell
//! holds. It is trained on composed scenes (studio shots cut out of their
//! white and placed on photographs, `fruits_preprocess::scene`), where the
//! fruit's mask says which cells are fruit.
//!
//! Cells scoring at least the threshold form connected regions (4-neighbours);
//! the largest few become boxes, each then classified on its own crop by the
//! service. Pure geometry and scoring here: no HTTP, no engine.

use fruits_classify::Classifier;
use fruits_pca::Pca;
use serde::{Deserialize, Serialize};

use crate::{Error, FileRef};

/// Longer side of the dense pass, in pixels: 10 cells of 32 px. Scenes are
/// trained at this side too, so a fruit covers as many cells in both.
pub const DENSE_SIDE: u32 = 320;
/// Pixels per cell of the feature map (the backbone's total stride).
pub const CELL: u32 = 32;

/// The localiser as `bundle.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocaliserRef {
    /// The per-cell classifier: outputs `[background, fruit]`.
    pub classifier: FileRef,
    /// Least fruit probability of a cell counted as fruit.
    pub threshold: f32,
    /// Longer side of the dense pass.
    pub side: u32,
    /// How it scored on held-out scenes when trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<LocaliserMetrics>,
}

/// Cell-level figures on held-out composed scenes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocaliserMetrics {
    pub train_scenes: usize,
    pub test_scenes: usize,
    /// Of the cells mostly fruit, the share scored fruit.
    pub recall: f64,
    /// Of the cells scored fruit, the share that hold some fruit.
    pub precision: f64,
    pub train_seconds: f64,
}

/// A loaded localiser.
#[derive(Debug, Clone)]
pub struct Localiser {
    pub classifier: Classifier,
    pub threshold: f32,
    pub side: u32,
    pub metrics: Option<LocaliserMetrics>,
}

/// Fruit probability per cell of one photo, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMap {
    pub rows: usize,
    pub columns: usize,
    pub scores: Vec<f32>,
}

/// A connected region of fruit cells: its bounding cells (end exclusive),
/// how many cells it has and the sum of their scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellRegion {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
    pub cells: usize,
    pub mass: f32,
}

impl Localiser {
    pub fn check(&self, pca: &Pca) -> Result<(), String> {
        if self.classifier.classes() != 2 || self.classifier.dim() != pca.k {
            return Err(format!(
                "the localiser reads {} values into {} outputs, the PCA gives {}",
                self.classifier.dim(),
                self.classifier.classes(),
                pca.k
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) || !(CELL..=4096).contains(&self.side) {
            return Err(format!(
                "localiser threshold {} or side {} out of range",
                self.threshold, self.side
            ));
        }
        Ok(())
    }

    /// Fruit probability of each cell, given one row of backbone features per cell.
    pub fn score(&self, pca: &Pca, cells: &[f32], (rows, columns): (usize, usize)) -> Result<ScoreMap, Error> {
        let reduced = pca.project(cells)?;
        let p = self.classifier.predict_proba(pca.k, &reduced)?;
        Ok(ScoreMap {
            rows,
            columns,
            scores: p.chunks_exact(2).map(|c| c[1]).collect(),
        })
    }
}

/// How the localiser learns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LocaliserOptions {
    /// Composed scenes rendered (a fifth held out to score it).
    pub scenes: usize,
    pub seed: u64,
    /// Every `empty_every`-th scene has no fruit: background cells only.
    pub empty_every: usize,
    pub threshold: f32,
}

impl Default for LocaliserOptions {
    fn default() -> Self {
        Self {
            scenes: 640,
            seed: 0x10CA_115E,
            empty_every: 8,
            threshold: 0.5,
        }
    }
}

/// A cell is learned as fruit when the fruit covers at least this much of
/// it, as background at most [`BACKGROUND_COVER`]; cells between are
/// left out (half a fruit's edge is neither).
const FRUIT_COVER: f32 = 0.5;
const BACKGROUND_COVER: f32 = 0.05;
/// Scenes per backbone batch.
const BATCH: usize = 8;

/// Renders `opts.scenes` scenes of the studio `shots` (decoded, each with a
/// key naming it) on `backgrounds`, runs the backbone's dense pass over
/// them on `threads` threads, and fits the per-cell classifier over `pca`.
pub fn fit(
    backbone: &fruits_backbone::Backbone,
    pca: &Pca,
    shots: &[(fruits_preprocess::RgbImage, String)],
    backgrounds: &fruits_preprocess::scene::Backgrounds,
    opts: &LocaliserOptions,
    threads: usize,
) -> Result<Localiser, Error> {
    use fruits_preprocess::scene::{cell_coverage, Scene, SIDE};
    let started = std::time::Instant::now();
    if shots.is_empty() || opts.scenes < 10 {
        return Err(Error::Localiser(
            "at least 10 scenes of at least one studio shot".into(),
        ));
    }
    let m = backbone.manifest();
    let spec = fruits_preprocess::Spec {
        size: SIDE,
        mean: m.input.mean,
        std: m.input.std,
    };
    let cells_per_side = SIDE / CELL;
    // One batch of scenes: their cell features and their cells' fruit cover.
    let batch = |first: usize| -> Result<(Vec<f32>, Vec<f32>), Error> {
        let last = (first + BATCH).min(opts.scenes);
        let (mut input, mut cover) = (Vec::new(), Vec::new());
        for index in first..last {
            let (shot, key) = &shots[index % shots.len()];
            let mut scene = Scene::seeded(opts.seed, key, index as u32, backgrounds.len());
            if opts.empty_every > 0 && index % opts.empty_every == opts.empty_every - 1 {
                scene.copies.clear();
            }
            let (image, mask) = scene.render_with_mask(shot, backgrounds, key);
            fruits_preprocess::normalize_into(&image, &spec, &mut input);
            cover.extend(cell_coverage(&mask, SIDE, cells_per_side));
        }
        let out = backbone.run_shaped(input, last - first, (SIDE, SIDE), true)?;
        let cells = out.cells.expect("asked for cells");
        let rows = (0..last - first).flat_map(|i| cells.rows_of(i)).collect();
        Ok((rows, cover))
    };
    let starts: Vec<usize> = (0..opts.scenes).step_by(BATCH).collect();
    let parts = parallel_map(&starts, threads.max(1), |&first| batch(first));
    let (mut features, mut cover) = (Vec::new(), Vec::new());
    for part in parts {
        let (f, c) = part?;
        features.extend(f);
        cover.extend(c);
    }
    let reduced = pca.project(&features)?;
    let per_scene = (cells_per_side * cells_per_side) as usize;
    let held_out = |cell: usize| (cell / per_scene) % 5 == 4;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (cell, &c) in cover.iter().enumerate() {
        let label = match c {
            c if c >= FRUIT_COVER => 1,
            c if c <= BACKGROUND_COVER => 0,
            _ => continue,
        };
        if !held_out(cell) {
            x.extend_from_slice(&reduced[cell * pca.k..(cell + 1) * pca.k]);
            y.push(label);
        }
    }
    let samples = fruits_classify::Samples::new(pca.k, &x, &y, 2)?;
    let logistic = fruits_classify::logistic::LogisticRegression::fit(&samples, Default::default())?;
    let mut localiser = Localiser {
        classifier: Classifier::LogisticRegression(logistic),
        threshold: opts.threshold,
        side: DENSE_SIDE,
        metrics: None,
    };
    let test: Vec<usize> = (0..cover.len()).filter(|&c| held_out(c)).collect();
    let test_rows: Vec<f32> = test
        .iter()
        .flat_map(|&c| reduced[c * pca.k..(c + 1) * pca.k].to_vec())
        .collect();
    let p = localiser.classifier.predict_proba(pca.k, &test_rows)?;
    let scored: Vec<(f32, f32)> = test
        .iter()
        .zip(p.chunks_exact(2))
        .map(|(&c, p)| (cover[c], p[1]))
        .collect();
    let count = |f: &dyn Fn(&(f32, f32)) -> bool| scored.iter().filter(|s| f(s)).count() as f64;
    let fruit = count(&|(c, _)| *c >= FRUIT_COVER);
    let found = count(&|(c, p)| *c >= FRUIT_COVER && *p >= opts.threshold);
    let said = count(&|(_, p)| *p >= opts.threshold);
    let right = count(&|(c, p)| *c > BACKGROUND_COVER && *p >= opts.threshold);
    let test_scenes = (0..opts.scenes).filter(|s| s % 5 == 4).count();
    localiser.metrics = Some(LocaliserMetrics {
        train_scenes: opts.scenes - test_scenes,
        test_scenes,
        recall: found / fruit.max(1.0),
        precision: right / said.max(1.0),
        train_seconds: started.elapsed().as_secs_f64(),
    });
    Ok(localiser)
}

/// `f` over `items` on `threads` scoped threads, results in order.
fn parallel_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a localiser worker does not panic"))
            .collect()
    })
}

/// The dense pass's input shape for a `width × height` photo: the longer
/// side `side`, the shorter in proportion, both whole cells (at least one).
pub fn dense_shape(width: u32, height: u32, side: u32) -> (u32, u32) {
    let longer = width.max(height).max(1) as f32;
    let cells = |length: u32| {
        let scaled = length as f32 * side as f32 / longer;
        ((scaled / CELL as f32).round() as u32).max(1) * CELL
    };
    (cells(width), cells(height))
}

impl ScoreMap {
    /// Connected regions of cells scoring at least `threshold`, largest
    /// score mass first, at most `max` of them.
    pub fn regions(&self, threshold: f32, max: usize) -> Vec<CellRegion> {
        let (rows, columns) = (self.rows, self.columns);
        let mut seen = vec![false; rows * columns];
        let mut found = Vec::new();
        for start in 0..rows * columns {
            if seen[start] || self.scores[start] < threshold {
                continue;
            }
            let mut region = CellRegion {
                top: start / columns,
                left: start % columns,
                bottom: start / columns + 1,
                right: start % columns + 1,
                cells: 0,
                mass: 0.0,
            };
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                let (r, c) = (i / columns, i % columns);
                region.top = region.top.min(r);
                region.left = region.left.min(c);
                region.bottom = region.bottom.max(r + 1);
                region.right = region.right.max(c + 1);
                region.cells += 1;
                region.mass += self.scores[i];
                let neighbours = [
                    (r > 0).then(|| i - columns),
                    (r + 1 < rows).then(|| i + columns),
                    (c > 0).then(|| i - 1),
                    (c + 1 < columns).then(|| i + 1),
                ];
                for n in neighbours.into_iter().flatten() {
                    if !seen[n] && self.scores[n] >= threshold {
                        seen[n] = true;
                        stack.push(n);
                    }
                }
            }
            found.push(region);
        }
        found.sort_by(|a, b| b.mass.total_cmp(&a.mass));
        found.truncate(max);
        found
    }
}

impl ScoreMap {
    /// The mean score of the cells whose centres lie in a box given as
    /// shares of the photo `(x, y, width, height)`; 0 when none does.
    pub fn mean_within(&self, (x, y, width, height): (f32, f32, f32, f32)) -> f32 {
        let (mut sum, mut n) = (0.0, 0);
        for r in 0..self.rows {
            let cy = (r as f32 + 0.5) / self.rows as f32;
            for c in 0..self.columns {
                let cx = (c as f32 + 0.5) / self.columns as f32;
                if cx >= x && cx < x + width && cy >= y && cy < y + height {
                    sum += self.scores[r * self.columns + c];
                    n += 1;
                }
            }
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f32
        }
    }
}

impl CellRegion {
    /// The region as shares of the photo: `(x, y, width, height)`.
    pub fn bounds(&self, map: &ScoreMap) -> (f32, f32, f32, f32) {
        let (r, c) = (map.rows as f32, map.columns as f32);
        (
            self.left as f32 / c,
            self.top as f32 / r,
            (self.right - self.left) as f32 / c,
            (self.bottom - self.top) as f32 / r,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rows: usize, columns: usize, text: &str) -> ScoreMap {
        let scores: Vec<f32> = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| if c == '#' { 0.9 } else { 0.1 })
            .collect();
        assert_eq!(scores.len(), rows * columns);
        ScoreMap { rows, columns, scores }
    }

    #[test]
    fn fruit_cells_group_into_regions_by_four_neighbours_largest_first() {
        let m = map(
            4,
            6,
            "##....
             ##..#.
             ...###
             #....#",
        );
        let found = m.regions(0.5, 10);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            (
                found[0].top,
                found[0].left,
                found[0].bottom,
                found[0].right,
                found[0].cells
            ),
            (1, 3, 4, 6, 5)
        );
        assert_eq!((found[1].cells, found[2].cells), (4, 1));
        assert_eq!(found[1].bounds(&m), (0.0, 0.0, 2.0 / 6.0, 0.5));
        assert_eq!(m.regions(0.5, 2).len(), 2, "at most max");
        assert!(m.regions(0.95, 10).is_empty());
    }

    #[test]
    fn the_mean_within_a_box_reads_the_cells_centred_in_it() {
        let m = map(
            2,
            4,
            "##..
             #...",
        );
        assert_eq!(m.mean_within((0.0, 0.0, 0.5, 1.0)), (0.9 * 3.0 + 0.1) / 4.0);
        assert_eq!(m.mean_within((0.5, 0.0, 0.5, 1.0)), 0.1);
        assert_eq!(m.mean_within((0.01, 0.01, 0.01, 0.01)), 0.0, "no cell centre inside");
    }

    #[test]
    fn the_dense_pass_keeps_the_aspect_in_whole_cells() {
        assert_eq!(dense_shape(4032, 3024, 320), (320, 256));
        assert_eq!(dense_shape(3024, 4032, 320), (256, 320));
        assert_eq!(dense_shape(500, 500, 320), (320, 320));
        assert_eq!(
            dense_shape(448, 111_607, 320),
            (32, 320),
            "a strip keeps one cell across"
        );
    }
}
