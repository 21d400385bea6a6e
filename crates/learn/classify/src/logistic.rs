//! Multinomial logistic regression: softmax over `classes` linear scores,
//! cross-entropy plus an L2 penalty on the weights, minimised by L-BFGS over
//! the whole training set. Each evaluation of the loss is two matrix products
//! (`XW` and `Xᵀ(P − Y)`), run in parallel by faer.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use serde::{Deserialize, Serialize};

use crate::{Error, Samples};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogisticOptions {
    /// L2 penalty on the weights (not on the biases).
    pub l2: f64,
    /// Scale each input to unit variance first.
    pub standardize: bool,
    pub max_iterations: usize,
    /// Stop when the largest gradient entry falls below this.
    pub tolerance: f64,
}

impl Default for LogisticOptions {
    fn default() -> Self {
        Self {
            l2: 1e-4,
            standardize: true,
            max_iterations: 300,
            tolerance: 1e-5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogisticRegression {
    pub dim: usize,
    pub classes: usize,
    pub options: LogisticOptions,
    /// Inputs are `(x − mean) / scale` before the linear scores.
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    /// Row-major `dim × classes`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub iterations: usize,
    pub final_loss: f64,
}

impl LogisticRegression {
    pub fn fit(data: &Samples, options: LogisticOptions) -> Result<Self, Error> {
        let (n, d, c) = (data.len(), data.dim, data.classes);
        let (mean, scale) = standardizer(data, options.standardize);
        let x = Mat::<f64>::from_fn(n, d, |i, j| f64::from((data.x[i * d + j] - mean[j]) / scale[j]));
        let objective = Objective {
            x: x.as_ref(),
            y: data.y,
            classes: c,
            l2: options.l2,
        };
        let start = vec![0.0; d * c + c];
        let (w, iterations, final_loss) = lbfgs(&objective, start, options);
        Ok(Self {
            dim: d,
            classes: c,
            options,
            mean,
            scale,
            weights: w[..d * c].iter().map(|&v| v as f32).collect(),
            bias: w[d * c..].iter().map(|&v| v as f32).collect(),
            iterations,
            final_loss,
        })
    }

    /// Class probabilities, row-major `n × classes`.
    pub fn predict_proba(&self, dim: usize, x: &[f32]) -> Result<Vec<f32>, Error> {
        let n = crate::rows_of(self.dim, dim, x)?;
        let xs = Mat::<f32>::from_fn(n, dim, |i, j| (x[i * dim + j] - self.mean[j]) / self.scale[j]);
        let w = MatRef::from_row_major_slice(&self.weights, self.dim, self.classes);
        let mut z = Mat::<f32>::zeros(n, self.classes);
        matmul(z.as_mut(), Accum::Replace, xs.as_ref(), w, 1.0, Par::Seq);
        let mut out = vec![0.0f32; n * self.classes];
        for i in 0..n {
            let row = &mut out[i * self.classes..(i + 1) * self.classes];
            for (j, v) in row.iter_mut().enumerate() {
                *v = z[(i, j)] + self.bias[j];
            }
            fruits_common::softmax_in_place(row);
        }
        Ok(out)
    }
}

/// Per-input mean and standard deviation (or 0 and 1 when not standardizing).
fn standardizer(data: &Samples, on: bool) -> (Vec<f32>, Vec<f32>) {
    let d = data.dim;
    if !on {
        return (vec![0.0; d], vec![1.0; d]);
    }
    let n = data.len() as f64;
    let mut sum = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for i in 0..data.len() {
        for (j, &v) in data.row(i).iter().enumerate() {
            sum[j] += f64::from(v);
            sq[j] += f64::from(v) * f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let scale = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / n - m * m).max(0.0).sqrt() as f32).max(1e-6))
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), scale)
}

/// Mean cross-entropy plus `l2/2 · ‖W‖²` and its gradient, at `w = [W | b]`.
struct Objective<'a> {
    x: MatRef<'a, f64>,
    y: &'a [u32],
    classes: usize,
    l2: f64,
}

impl Objective<'_> {
    fn value_and_gradient(&self, w: &[f64], grad: &mut [f64]) -> f64 {
        let (n, d, c) = (self.x.nrows(), self.x.ncols(), self.classes);
        let weights = MatRef::from_row_major_slice(&w[..d * c], d, c);
        let bias = &w[d * c..];
        let mut z = Mat::<f64>::zeros(n, c);
        matmul(z.as_mut(), Accum::Replace, self.x, weights, 1.0, Par::rayon(0));
        let mut loss = 0.0;
        let mut grad_bias = vec![0.0; c];
        for i in 0..n {
            let max = (0..c).map(|j| z[(i, j)] + bias[j]).fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for j in 0..c {
                let e = (z[(i, j)] + bias[j] - max).exp();
                z[(i, j)] = e;
                sum += e;
            }
            let label = self.y[i] as usize;
            loss -= (z[(i, label)] / sum).ln();
            // Row i becomes P − Y, scaled by 1/n: the gradient of the mean loss.
            for j in 0..c {
                let p = z[(i, j)] / sum - if j == label { 1.0 } else { 0.0 };
                z[(i, j)] = p / n as f64;
                grad_bias[j] += p / n as f64;
            }
        }
        let mut gw = Mat::<f64>::zeros(d, c);
        matmul(
            gw.as_mut(),
            Accum::Replace,
            self.x.transpose(),
            z.as_ref(),
            1.0,
            Par::rayon(0),
        );
        let mut penalty = 0.0;
        for r in 0..d {
            for j in 0..c {
                let wv = w[r * c + j];
                grad[r * c + j] = gw[(r, j)] + self.l2 * wv;
                penalty += wv * wv;
            }
        }
        grad[d * c..].copy_from_slice(&grad_bias);
        loss / n as f64 + 0.5 * self.l2 * penalty
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// L-BFGS (10 pairs) with a backtracking Armijo line search; returns the
/// minimiser, the iterations used and the final loss.
fn lbfgs(f: &Objective, mut w: Vec<f64>, options: LogisticOptions) -> (Vec<f64>, usize, f64) {
    const MEMORY: usize = 10;
    let len = w.len();
    let mut grad = vec![0.0; len];
    let mut loss = f.value_and_gradient(&w, &mut grad);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let (mut new_w, mut new_grad) = (vec![0.0; len], vec![0.0; len]);
    let mut iterations = 0;
    while iterations < options.max_iterations {
        if grad.iter().fold(0.0f64, |m, g| m.max(g.abs())) < options.tolerance {
            break;
        }
        iterations += 1;
        let direction = two_loop(&grad, &pairs);
        let slope = dot(&direction, &grad);
        // The first step knows no curvature: keep it small.
        let mut step = if pairs.is_empty() {
            1.0 / dot(&grad, &grad).sqrt().max(1.0)
        } else {
            1.0
        };
        let mut new_loss;
        loop {
            for i in 0..len {
                new_w[i] = w[i] - step * direction[i];
            }
            new_loss = f.value_and_gradient(&new_w, &mut new_grad);
            if new_loss <= loss - 1e-4 * step * slope || step < 1e-10 {
                break;
            }
            step *= 0.5;
        }
        let s: Vec<f64> = (0..len).map(|i| new_w[i] - w[i]).collect();
        let y: Vec<f64> = (0..len).map(|i| new_grad[i] - grad[i]).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if pairs.len() == MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(&mut w, &mut new_w);
        std::mem::swap(&mut grad, &mut new_grad);
        let improvement = (loss - new_loss).abs() / loss.abs().max(1.0);
        loss = new_loss;
        if improvement < 1e-10 {
            break;
        }
    }
    tracing::debug!(iterations, loss, "logistic regression fitted");
    (w, iterations, loss)
}

/// The L-BFGS search direction `H·g` from the stored pairs.
fn two_loop(grad: &[f64], pairs: &std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)>) -> Vec<f64> {
    let mut q = grad.to_vec();
    let mut alphas = Vec::with_capacity(pairs.len());
    for (s, y, rho) in pairs.iter().rev() {
        let a = rho * dot(s, &q);
        for (qi, yi) in q.iter_mut().zip(y) {
            *qi -= a * yi;
        }
        alphas.push(a);
    }
    if let Some((s, y, _)) = pairs.back() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
        let b = rho * dot(y, &q);
        for (qi, si) in q.iter_mut().zip(s) {
            *qi += (a - b) * si;
        }
    }
    q
}
