use fruits_classify::metrics::evaluate;

use super::*;

fn report() -> Report {
    let classes: Vec<String> = ["Apple <Red>", "Banana", "Cherry"].map(String::from).to_vec();
    let onehot = |c: usize| {
        let mut r = vec![0.0f32; 3];
        r[c] = 1.0;
        r
    };
    let proba: Vec<f32> = [0, 1, 1, 2].iter().flat_map(|&c| onehot(c)).collect();
    Report {
        title: "Fruits! run".into(),
        classes,
        train_rows: 10,
        test_rows: 4,
        pca_k: 2,
        explained_variance_ratio: vec![0.6, 0.3, 0.1],
        classifiers: vec![("logistic_regression".into(), evaluate(&[0, 0, 1, 2], &proba, 3))],
        timings: vec![("featurize".into(), 1.5)],
        examples: vec![((0, 1), vec![("s3://b/x.jpg".into(), vec![0xff, 0xd8, 0xff])])],
    }
}

#[test]
fn the_page_is_self_contained_and_shows_every_part() {
    let html = report().html();
    assert!(html.starts_with("<!doctype html>"));
    for part in [
        "explained variance",
        "confusion matrix",
        "F1 per class",
        "Most confused pairs",
        "Run timings",
        "k = 2: 90.0 %",
        "data:image/jpeg;base64,/9j/",
        "75.00 %",
    ] {
        assert!(html.contains(part), "missing {part}");
    }
    assert!(html.contains("Apple &lt;Red&gt;"), "names are escaped");
    assert!(!html.contains("<Red>"));
    for external in ["http://", "https://", "//cdn"] {
        let outside_svg_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!outside_svg_ns.contains(external), "external resource {external}");
    }
}
