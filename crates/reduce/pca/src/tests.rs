use super::*;

/// Points on a tilted line in 3-d with a little noise off it.
fn line_points(n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|i| {
            let t = i as f32 / n as f32 - 0.5;
            let wobble = if i % 2 == 0 { 0.01 } else { -0.01 };
            [1.0 + 2.0 * t, -3.0 + 2.0 * t + wobble, 5.0 + t]
        })
        .collect()
}

#[test]
fn merged_partial_moments_equal_one_pass() {
    let rows = line_points(1000);
    let mut whole = Moments::new(3);
    whole.add_rows(&rows);
    let mut a = Moments::new(3);
    a.add_rows(&rows[..300 * 3]);
    let mut b = Moments::new(3);
    b.add_rows(&rows[300 * 3..]);
    a.merge(&b).unwrap();
    assert_eq!(a.n, whole.n);
    for (x, y) in a.gram.iter().zip(&whole.gram) {
        assert!((x - y).abs() < 1e-9 * x.abs().max(1.0));
    }
}

#[test]
fn the_first_component_follows_the_line_and_explains_almost_all() {
    let mut m = Moments::new(3);
    m.add_rows(&line_points(1000));
    let pca = m.fit(Keep::Variance(0.99)).unwrap();
    assert_eq!(pca.k, 1);
    let norm = (4.0f32 + 4.0 + 1.0).sqrt();
    let expected = [2.0 / norm, 2.0 / norm, 1.0 / norm];
    for (c, e) in pca.components.iter().zip(expected) {
        assert!((c - e).abs() < 1e-3, "{:?}", pca.components);
    }
    assert!(pca.explained_variance() > 0.999);
    let sum: f64 = pca.explained_variance_ratio.iter().sum();
    assert!((sum - 1.0).abs() < 1e-9);
}

#[test]
fn projection_centres_and_rotates() {
    let rows = line_points(100);
    let mut m = Moments::new(3);
    m.add_rows(&rows);
    let pca = m.fit(Keep::Count(3)).unwrap();
    let p = pca.project(&rows).unwrap();
    // Projected data are centred, and a full rotation keeps distances.
    let mean0: f32 = p.chunks(3).map(|r| r[0]).sum::<f32>() / 100.0;
    assert!(mean0.abs() < 1e-4);
    let d = |v: &[f32], w: &[f32]| v.iter().zip(w).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
    assert!((d(&rows[0..3], &rows[3..6]) - d(&p[0..3], &p[3..6])).abs() < 1e-4);
}

#[test]
fn keep_parses_counts_and_fractions() {
    assert_eq!("64".parse::<Keep>().unwrap(), Keep::Count(64));
    assert_eq!("0.95".parse::<Keep>().unwrap(), Keep::Variance(0.95));
    assert_eq!("95%".parse::<Keep>().unwrap(), Keep::Variance(0.95));
    assert!("0".parse::<Keep>().is_err());
    assert!("1.5".parse::<Keep>().is_err());
    assert!("lots".parse::<Keep>().is_err());
}

#[test]
fn a_model_survives_json_and_bad_json_is_refused() {
    let mut m = Moments::new(3);
    m.add_rows(&line_points(10));
    let pca = m.fit(Keep::Count(2)).unwrap();
    let back = Pca::from_json("mem://pca", &pca.to_json()).unwrap();
    assert_eq!(
        (back.k, &back.mean, &back.components),
        (pca.k, &pca.mean, &pca.components)
    );
    assert!((back.explained_variance() - pca.explained_variance()).abs() < 1e-12);
    assert!(Pca::from_json("mem://pca", b"{\"dim\": 3}").is_err());
    let mut broken = pca.clone();
    broken.components.pop();
    assert!(Pca::from_json("mem://pca", &broken.to_json()).is_err());
}

#[test]
fn too_few_rows_or_no_variance_are_errors() {
    let mut m = Moments::new(2);
    m.add_rows(&[1.0, 2.0]);
    assert!(matches!(m.fit(Keep::Count(1)), Err(Error::TooFewRows(1))));
    m.add_rows(&[1.0, 2.0]);
    assert!(matches!(m.fit(Keep::Count(1)), Err(Error::NoVariance)));
}

#[test]
fn a_few_rows_project_as_a_batch_does() {
    let rows: Vec<f32> = (0..40 * 37).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
    let mut m = Moments::new(37);
    m.add_rows(&rows);
    let pca = m.fit(Keep::Count(11)).unwrap();
    let batch = pca.project(&rows).unwrap();
    for (i, row) in rows.chunks(37).enumerate() {
        let one = pca.project(row).unwrap();
        for (a, b) in one.iter().zip(&batch[i * 11..(i + 1) * 11]) {
            assert!((a - b).abs() < 1e-4, "row {i}: {a} against {b}");
        }
    }
}
