//! Principal component analysis, the maths of the reduce stage.
//!
//! The fit is split the way a distributed engine wants it: each partition
//! accumulates [`Moments`] (count, sum vector and Gram matrix, in f64),
//! partial moments merge ([`Moments::merge`]) in any order, and the merged
//! covariance is eigen-decomposed once ([`Moments::fit`]). [`Pca::project`]
//! then maps rows to the `k` leading components.
//!
//! Must not depend on an engine (DataFusion, Ballista) or a store: the
//! engine's `pca_moments` and `pca_project` functions (`fruits-functions`)
//! wrap this crate, and the service projects with it without any engine.

mod moments;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use serde::{Deserialize, Serialize};

pub use moments::{Keep, Moments};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vectors of {got} values where {expected} were expected")]
    Dimension { expected: usize, got: usize },
    #[error("a PCA needs at least 2 rows, got {0}")]
    TooFewRows(u64),
    #[error("the vectors have no variance")]
    NoVariance,
    #[error("eigen-decomposition failed: {0}")]
    Eigen(String),
    #[error("PCA model {uri}: {cause}")]
    Model { uri: String, cause: String },
}

/// A fitted PCA: `project(x) = C · (x − μ)` with the `k` leading components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    /// Width of the input vectors.
    pub dim: usize,
    /// Components kept.
    pub k: usize,
    /// Rows the model was fitted on.
    pub rows: u64,
    pub mean: Vec<f32>,
    /// Row-major `k × dim`, unit rows, largest variance first.
    pub components: Vec<f32>,
    /// Of every component (all `dim` of them), largest first; sums to 1.
    pub explained_variance_ratio: Vec<f64>,
}

/// Up to this many rows are projected by [`Pca::project_few`].
const FEW_ROWS: usize = 16;

/// Dot product in eight lanes (so that it vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl Pca {
    /// Fraction of the variance the kept components explain.
    pub fn explained_variance(&self) -> f64 {
        self.explained_variance_ratio[..self.k].iter().sum()
    }

    /// Projects rows given row-major (`n × dim`) to `n × k`, row-major.
    pub fn project(&self, rows: &[f32]) -> Result<Vec<f32>, Error> {
        if !rows.len().is_multiple_of(self.dim) {
            return Err(Error::Dimension {
                expected: self.dim,
                got: rows.len() % self.dim,
            });
        }
        let n = rows.len() / self.dim;
        if n <= FEW_ROWS {
            return Ok(self.project_few(rows));
        }
        let x = Mat::<f32>::from_fn(n, self.dim, |i, j| rows[i * self.dim + j] - self.mean[j]);
        let c = MatRef::from_row_major_slice(&self.components, self.k, self.dim);
        let mut out = Mat::<f32>::zeros(n, self.k);
        matmul(out.as_mut(), Accum::Replace, x.as_ref(), c.transpose(), 1.0, Par::Seq);
        Ok((0..n)
            .flat_map(|i| (0..self.k).map(move |j| (i, j)))
            .map(|(i, j)| out[(i, j)])
            .collect())
    }

    /// Dot products with each (contiguous) component row: for the few rows
    /// of one photo, where a general matrix product spends more time packing
    /// the `k × dim` components than multiplying (a third of a served
    /// studio shot's own time, measured).
    fn project_few(&self, rows: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len() / self.dim * self.k);
        let mut centred = vec![0.0; self.dim];
        for row in rows.chunks_exact(self.dim) {
            for ((c, x), m) in centred.iter_mut().zip(row).zip(&self.mean) {
                *c = x - m;
            }
            out.extend(
                self.components
                    .chunks_exact(self.dim)
                    .map(|component| dot(&centred, component)),
            );
        }
        out
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a PCA serializes")
    }

    pub fn from_json(uri: &str, bytes: &[u8]) -> Result<Self, Error> {
        let pca: Pca = serde_json::from_slice(bytes).map_err(|e| Error::Model {
            uri: uri.into(),
            cause: e.to_string(),
        })?;
        let consistent = pca.k >= 1
            && pca.k <= pca.dim
            && pca.mean.len() == pca.dim
            && pca.components.len() == pca.k * pca.dim
            && pca.explained_variance_ratio.len() == pca.dim;
        if !consistent {
            return Err(Error::Model {
                uri: uri.into(),
                cause: "inconsistent sizes".into(),
            });
        }
        Ok(pca)
    }
}

#[cfg(test)]
mod tests;
