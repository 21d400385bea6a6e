//! Index arithmetic for strided tensors (shared by reader and writer).

/// Row-major strides for `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut stride = vec![0; shape.len()];
    let mut acc = 1usize;
    for d in (0..shape.len()).rev() {
        stride[d] = acc;
        acc = acc.saturating_mul(shape[d]);
    }
    stride
}

/// Whether elements are laid out row-major without gaps. Size-1 dims may have
/// any stride, as in torch.
pub(crate) fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let expected = contiguous_strides(shape);
    (0..shape.len()).all(|d| shape[d] == 1 || stride[d] == expected[d])
}

/// Storage index of the last element (every index at its maximum), or `None`
/// on overflow. Only meaningful for a non-empty tensor.
pub(crate) fn last_index(offset: usize, shape: &[usize], stride: &[usize]) -> Option<usize> {
    shape.iter().zip(stride).try_fold(offset, |acc, (&n, &s)| {
        n.checked_sub(1)?.checked_mul(s)?.checked_add(acc)
    })
}

/// Calls `f` with the storage index of every element, in row-major logical
/// order. Wrapping arithmetic cannot panic; once `last_index` has been
/// checked, every index handed to `f` is exact and in range.
pub(crate) fn for_each_offset(shape: &[usize], stride: &[usize], base: usize, mut f: impl FnMut(usize)) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    let mut pos = base;
    loop {
        f(pos);
        // Odometer: bump the last dim, carrying into earlier ones.
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            pos = pos.wrapping_add(stride[d]);
            if idx[d] < shape[d] {
                break;
            }
            pos = pos.wrapping_sub(stride[d].wrapping_mul(shape[d]));
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(shape: &[usize], stride: &[usize], base: usize) -> Vec<usize> {
        let mut v = Vec::new();
        for_each_offset(shape, stride, base, |i| v.push(i));
        v
    }

    #[test]
    fn walks_row_major_logical_order() {
        assert_eq!(offsets(&[], &[], 5), [5]);
        assert_eq!(offsets(&[3], &[2], 1), [1, 3, 5]);
        assert_eq!(offsets(&[2, 3], &[1, 2], 0), [0, 2, 4, 1, 3, 5]);
        assert_eq!(offsets(&[2, 0], &[1, 2], 0), Vec::<usize>::new());
    }

    #[test]
    fn contiguity_and_bounds() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
        assert!(is_contiguous(&[2, 1, 4], &[4, 99, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert_eq!(last_index(3, &[2, 3], &[1, 2]), Some(3 + 1 + 4));
        assert_eq!(last_index(0, &[3], &[usize::MAX]), None);
    }
}
