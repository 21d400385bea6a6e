//! First and second moments of a set of vectors, accumulated in f64 and
//! mergeable: the partial state of a distributed PCA fit.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};

use crate::{Error, Pca};

/// Rows converted to f64 and multiplied at once: big enough for the matrix
/// kernel to run at full speed, small enough to bound memory (256 × d f64).
const CHUNK_ROWS: usize = 256;

/// `n`, `Σx` and `Σxxᵀ` of the rows seen so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub dim: usize,
    pub n: u64,
    pub sum: Vec<f64>,
    /// Row-major `dim × dim`.
    pub gram: Vec<f64>,
}

impl Moments {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            n: 0,
            sum: vec![0.0; dim],
            gram: vec![0.0; dim * dim],
        }
    }

    /// Adds rows given row-major (`rows.len()` a multiple of `dim`).
    pub fn add_rows(&mut self, rows: &[f32]) {
        assert_eq!(rows.len() % self.dim, 0, "rows of {} values", self.dim);
        let d = self.dim;
        let mut gram = Mat::<f64>::from_fn(d, d, |i, j| self.gram[i * d + j]);
        for chunk in rows.chunks(CHUNK_ROWS * d) {
            let b = chunk.len() / d;
            let x = Mat::<f64>::from_fn(b, d, |i, j| f64::from(chunk[i * d + j]));
            matmul(gram.as_mut(), Accum::Add, x.transpose(), x.as_ref(), 1.0, Par::Seq);
            for row in chunk.chunks_exact(d) {
                for (s, v) in self.sum.iter_mut().zip(row) {
                    *s += f64::from(*v);
                }
            }
            self.n += b as u64;
        }
        for i in 0..d {
            for j in 0..d {
                self.gram[i * d + j] = gram[(i, j)];
            }
        }
    }

    /// Adds another partial state (from another partition or executor).
    pub fn merge(&mut self, other: &Moments) -> Result<(), Error> {
        if other.dim != self.dim {
            return Err(Error::Dimension {
                expected: self.dim,
                got: other.dim,
            });
        }
        self.n += other.n;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.gram.iter_mut().zip(&other.gram) {
            *a += b;
        }
        Ok(())
    }

    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.n as f64).collect()
    }

    /// The sample covariance `(Σxxᵀ − n·μμᵀ) / (n − 1)`.
    pub fn covariance(&self) -> Result<Mat<f64>, Error> {
        if self.n < 2 {
            return Err(Error::TooFewRows(self.n));
        }
        let mu = self.mean();
        let (n, d) = (self.n as f64, self.dim);
        Ok(Mat::from_fn(d, d, |i, j| {
            (self.gram[i * d + j] - n * mu[i] * mu[j]) / (n - 1.0)
        }))
    }

    /// Eigen-decomposes the covariance and keeps the components asked for.
    pub fn fit(&self, keep: Keep) -> Result<Pca, Error> {
        let cov = self.covariance()?;
        let eig = cov
            .self_adjoint_eigen(faer::Side::Lower)
            .map_err(|e| Error::Eigen(format!("{e:?}")))?;
        let d = self.dim;
        // faer sorts eigenvalues ascending; PCA wants the largest first.
        let order: Vec<usize> = (0..d).rev().collect();
        let values: Vec<f64> = order.iter().map(|&i| eig.S()[i].max(0.0)).collect();
        let total: f64 = values.iter().sum();
        if total <= 0.0 {
            return Err(Error::NoVariance);
        }
        let ratios: Vec<f64> = values.iter().map(|v| v / total).collect();
        let k = keep.count(&ratios);
        let mut components = Vec::with_capacity(k * d);
        for &i in &order[..k] {
            let column: Vec<f64> = (0..d).map(|r| eig.U()[(r, i)]).collect();
            // An eigenvector's sign is arbitrary: fix it so that refits agree.
            let pivot = column
                .iter()
                .copied()
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
            let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
            components.extend(column.iter().map(|v| (v * sign) as f32));
        }
        Ok(Pca {
            dim: d,
            k,
            rows: self.n,
            mean: self.mean().iter().map(|&m| m as f32).collect(),
            components,
            explained_variance_ratio: ratios,
        })
    }
}

/// How many components to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    /// Exactly this many (at most the dimension).
    Count(usize),
    /// The fewest whose explained variance reaches this fraction (0..=1).
    Variance(f64),
}

impl Keep {
    fn count(&self, ratios: &[f64]) -> usize {
        match *self {
            Keep::Count(k) => k.clamp(1, ratios.len()),
            Keep::Variance(target) => {
                let mut acc = 0.0;
                for (i, r) in ratios.iter().enumerate() {
                    acc += r;
                    if acc >= target - 1e-12 {
                        return i + 1;
                    }
                }
                ratios.len()
            }
        }
    }
}

impl std::str::FromStr for Keep {
    type Err = String;

    /// `64` keeps 64 components; `0.95` or `95%` keeps 95 % of the variance.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is neither a component count (64) nor a variance fraction (0.95 or 95%)");
        if let Some(pct) = s.strip_suffix('%') {
            let v: f64 = pct.trim().parse().map_err(|_| bad())?;
            return (v > 0.0 && v <= 100.0)
                .then_some(Keep::Variance(v / 100.0))
                .ok_or_else(bad);
        }
        if let Ok(k) = s.parse::<usize>() {
            return (k > 0).then_some(Keep::Count(k)).ok_or_else(bad);
        }
        let v: f64 = s.parse().map_err(|_| bad())?;
        (v > 0.0 && v <= 1.0).then_some(Keep::Variance(v)).ok_or_else(bad)
    }
}
