//! A random forest: bootstrap samples, CART trees split on Gini impurity over
//! a random subset of the inputs at each node. Inputs are cut into at most
//! 64 quantile bins first, so that finding a split is a histogram scan rather
//! than a sort. Trees are grown in parallel, each from its own seed: the same
//! seed grows the same forest.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Error, Samples};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForestOptions {
    pub trees: usize,
    pub max_depth: usize,
    pub min_samples_leaf: usize,
    /// Inputs tried per split; `None` is √dim.
    pub features_per_split: Option<usize>,
    pub seed: u64,
}

impl Default for ForestOptions {
    fn default() -> Self {
        Self {
            trees: 100,
            max_depth: 40,
            min_samples_leaf: 1,
            features_per_split: None,
            seed: 42,
        }
    }
}

const MAX_BINS: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RandomForest {
    pub dim: usize,
    pub classes: usize,
    pub options: ForestOptions,
    pub trees: Vec<Tree>,
}

/// Nodes in one array; node 0 is the root. A split sends `x[feature] <=
/// threshold` left. A leaf holds its class distribution, sparsely.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Node {
    Split {
        feature: u32,
        threshold: f32,
        left: u32,
        right: u32,
    },
    Leaf {
        classes: Vec<u32>,
        probabilities: Vec<f32>,
    },
}

impl RandomForest {
    pub fn fit(data: &Samples, options: ForestOptions) -> Result<Self, Error> {
        let binned = Binned::new(data);
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(options.trees.max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut trees: Vec<(usize, Tree)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut grown = Vec::new();
                        loop {
                            let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if t >= options.trees {
                                break grown;
                            }
                            let seed = options.seed ^ (t as u64).wrapping_mul(0xA24B_AED4_963E_E407);
                            grown.push((t, Grower::new(data, &binned, options, seed).grow()));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a tree grower does not panic"))
                .collect()
        });
        trees.sort_by_key(|(t, _)| *t);
        Ok(Self {
            dim: data.dim,
            classes: data.classes,
            options,
            trees: trees.into_iter().map(|(_, tree)| tree).collect(),
        })
    }

    /// Mean of the trees' leaf distributions, row-major `n × classes`.
    pub fn predict_proba(&self, dim: usize, x: &[f32]) -> Result<Vec<f32>, Error> {
        let n = crate::rows_of(self.dim, dim, x)?;
        let mut out = vec![0.0f32; n * self.classes];
        let weight = 1.0 / self.trees.len().max(1) as f32;
        for i in 0..n {
            let row = &x[i * dim..(i + 1) * dim];
            let dist = &mut out[i * self.classes..(i + 1) * self.classes];
            for tree in &self.trees {
                let (classes, probabilities) = tree.leaf(row);
                for (&c, &p) in classes.iter().zip(probabilities) {
                    dist[c as usize] += p * weight;
                }
            }
        }
        Ok(out)
    }
}

impl Tree {
    fn leaf(&self, row: &[f32]) -> (&[u32], &[f32]) {
        let mut at = 0;
        loop {
            match &self.nodes[at] {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    at = if row[*feature as usize] <= *threshold {
                        *left
                    } else {
                        *right
                    } as usize
                }
                Node::Leaf { classes, probabilities } => return (classes, probabilities),
            }
        }
    }
}

/// Every input cut into quantile bins: `bins[f][i]` is row i's bin of input
/// f, and `cuts[f][b]` the largest value of bin b.
struct Binned {
    bins: Vec<Vec<u8>>,
    cuts: Vec<Vec<f32>>,
}

impl Binned {
    fn new(data: &Samples) -> Self {
        let n = data.len();
        let step = (n / 20_000).max(1);
        let (mut bins, mut cuts) = (Vec::with_capacity(data.dim), Vec::with_capacity(data.dim));
        for f in 0..data.dim {
            let mut sample: Vec<f32> = (0..n).step_by(step).map(|i| data.x[i * data.dim + f]).collect();
            sample.sort_by(f32::total_cmp);
            let mut edges: Vec<f32> = (1..MAX_BINS)
                .map(|q| sample[q * (sample.len() - 1) / MAX_BINS])
                .collect();
            edges.dedup();
            let column = (0..n)
                .map(|i| edges.partition_point(|&e| e < data.x[i * data.dim + f]) as u8)
                .collect();
            bins.push(column);
            cuts.push(edges);
        }
        Self { bins, cuts }
    }
}

/// Grows one tree.
struct Grower<'a> {
    data: &'a Samples<'a>,
    binned: &'a Binned,
    options: ForestOptions,
    rng: Rng,
    nodes: Vec<Node>,
    /// Global class → index among the classes of the current node.
    local: Vec<u32>,
}

impl<'a> Grower<'a> {
    fn new(data: &'a Samples<'a>, binned: &'a Binned, options: ForestOptions, seed: u64) -> Self {
        Self {
            data,
            binned,
            options,
            rng: Rng::new(seed),
            nodes: Vec::new(),
            local: vec![u32::MAX; data.classes],
        }
    }

    fn grow(mut self) -> Tree {
        let n = self.data.len();
        let mut rows: Vec<u32> = (0..n).map(|_| self.rng.below(n) as u32).collect();
        self.node(&mut rows, 0);
        Tree { nodes: self.nodes }
    }

    /// Builds the node for `rows` and its subtree; returns its index.
    fn node(&mut self, rows: &mut [u32], depth: usize) -> u32 {
        let at = self.nodes.len() as u32;
        let present = self.classes_of(rows);
        let min_leaf = self.options.min_samples_leaf.max(1);
        let split = if present.len() > 1 && depth < self.options.max_depth && rows.len() >= 2 * min_leaf {
            self.best_split(rows, &present)
        } else {
            None
        };
        let Some((feature, bin)) = split else {
            self.nodes.push(self.leaf(rows, &present));
            self.clear(&present);
            return at;
        };
        self.clear(&present);
        self.nodes.push(Node::Split {
            feature: feature as u32,
            threshold: self.binned.cuts[feature][bin],
            left: 0,
            right: 0,
        });
        let column = &self.binned.bins[feature];
        let mid = partition(rows, |r| column[r as usize] as usize <= bin);
        let (left_rows, right_rows) = rows.split_at_mut(mid);
        let left = self.node(left_rows, depth + 1);
        let right = self.node(right_rows, depth + 1);
        if let Node::Split { left: l, right: r, .. } = &mut self.nodes[at as usize] {
            (*l, *r) = (left, right);
        }
        at
    }

    /// The distinct classes of `rows`, numbered locally in `self.local`.
    fn classes_of(&mut self, rows: &[u32]) -> Vec<u32> {
        let mut present = Vec::new();
        for &r in rows {
            let c = self.data.y[r as usize] as usize;
            if self.local[c] == u32::MAX {
                self.local[c] = present.len() as u32;
                present.push(c as u32);
            }
        }
        present
    }

    fn clear(&mut self, present: &[u32]) {
        for &c in present {
            self.local[c as usize] = u32::MAX;
        }
    }

    fn leaf(&self, rows: &[u32], present: &[u32]) -> Node {
        let mut counts = vec![0u32; present.len()];
        for &r in rows {
            counts[self.local[self.data.y[r as usize] as usize] as usize] += 1;
        }
        Node::Leaf {
            classes: present.to_vec(),
            probabilities: counts.iter().map(|&k| k as f32 / rows.len() as f32).collect(),
        }
    }

    /// The (input, bin) split with the lowest weighted Gini impurity among a
    /// random subset of inputs, if any split leaves both sides big enough.
    fn best_split(&mut self, rows: &[u32], present: &[u32]) -> Option<(usize, usize)> {
        let dim = self.data.dim;
        let tries = self
            .options
            .features_per_split
            .unwrap_or_else(|| (dim as f64).sqrt().round() as usize)
            .clamp(1, dim);
        let mut order: Vec<usize> = (0..dim).collect();
        let c = present.len();
        let mut hist = vec![0u32; MAX_BINS * c];
        let mut totals = vec![0u32; c];
        for &r in rows {
            totals[self.local[self.data.y[r as usize] as usize] as usize] += 1;
        }
        let min_leaf = self.options.min_samples_leaf.max(1);
        let mut best: Option<(f64, usize, usize)> = None;
        for t in 0..tries {
            let pick = t + self.rng.below(dim - t);
            order.swap(t, pick);
            let feature = order[t];
            let column = &self.binned.bins[feature];
            let bins = self.binned.cuts[feature].len() + 1;
            hist[..bins * c].fill(0);
            for &r in rows {
                let class = self.local[self.data.y[r as usize] as usize] as usize;
                hist[column[r as usize] as usize * c + class] += 1;
            }
            // Score Σ L²/nL + Σ R²/nR, higher is purer; updated bin by bin.
            let (mut left, mut sq_left, mut n_left) = (vec![0u32; c], 0.0f64, 0usize);
            let mut sq_right: f64 = totals.iter().map(|&k| f64::from(k) * f64::from(k)).sum();
            for bin in 0..bins - 1 {
                for class in 0..c {
                    let k = hist[bin * c + class];
                    if k == 0 {
                        continue;
                    }
                    let (l, total) = (f64::from(left[class]), f64::from(totals[class]));
                    let (l2, r, r2) = (l + f64::from(k), total - l, total - l - f64::from(k));
                    sq_left += l2 * l2 - l * l;
                    sq_right += r2 * r2 - r * r;
                    left[class] += k;
                    n_left += k as usize;
                }
                let n_right = rows.len() - n_left;
                if n_left < min_leaf || n_right < min_leaf {
                    continue;
                }
                let score = sq_left / n_left as f64 + sq_right / n_right as f64;
                if best.is_none_or(|(s, _, _)| score > s + 1e-12) {
                    best = Some((score, feature, bin));
                }
            }
        }
        let parent: f64 = totals.iter().map(|&k| f64::from(k) * f64::from(k)).sum::<f64>() / rows.len() as f64;
        best.filter(|(score, _, _)| *score > parent + 1e-12)
            .map(|(_, f, b)| (f, b))
    }
}

/// Moves the rows for which `left` holds to the front; returns how many.
fn partition(rows: &mut [u32], left: impl Fn(u32) -> bool) -> usize {
    let mut mid = 0;
    for i in 0..rows.len() {
        if left(rows[i]) {
            rows.swap(i, mid);
            mid += 1;
        }
    }
    mid
}
