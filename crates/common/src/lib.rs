//! Small pieces every stage shares: the checksum that names models and
//! bundle files, and the ranking maths of the backbone's and the classifiers'
//! outputs.
//!
//! Must not depend on any other crate of the workspace, nor on an engine,
//! a store or a network stack: it is the leaf everyone may use.

/// The sha256 of `bytes` in lowercase hex: how a model, a bundle file or a
/// PCA is identified in plans, manifests and outputs (of the bytes as stored,
/// since JSON floats may not round-trip to the last bit).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A sha256 fed piece by piece (a file as it is written, a listing as it
/// streams), ending in the same lowercase hex as [`sha256_hex`].
#[derive(Clone, Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    pub fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    pub fn hex(self) -> String {
        hex::encode(sha2::Digest::finalize(self.0))
    }
}

/// The first `n` characters of a digest, for messages; all of it when
/// shorter (a digest read from a damaged file may be short or not ASCII).
pub fn short_digest(digest: &str, n: usize) -> &str {
    digest.char_indices().nth(n).map_or(digest, |(end, _)| &digest[..end])
}

/// Turns logits into probabilities, in place (max-shifted, so large logits
/// do not overflow).
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// The probabilities of `logits`, as a new vector.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let mut probs = logits.to_vec();
    softmax_in_place(&mut probs);
    probs
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_digests_never_slice_past_the_end_or_inside_a_character() {
        assert_eq!(short_digest("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(short_digest("abc", 12), "abc");
        assert_eq!(short_digest("", 12), "");
        assert_eq!(short_digest("ééééé", 2), "éé");
    }

    #[test]
    fn sha256_of_known_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1001.0, 999.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[0.3], 5), vec![0]);
    }
}
