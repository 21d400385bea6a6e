//! The `featurize` function on a plain DataFusion context (no engine around
//! it): good images give features, missing objects and non-images give error
//! rows, and a different model is refused.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{col, lit, SessionContext};
use fruits_backbone::Manifest;

fn shared_image() -> std::path::PathBuf {
    let dir =
        std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))
            .join("../../../../shared/fruits-360/Training/Lemon 1");
    let image = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    image.canonicalize().unwrap()
}

async fn run(paths: Vec<String>, sha: &str) -> datafusion::error::Result<Vec<RecordBatch>> {
    let model_dir = fruits_backbone::default_model_dir();
    let ctx = SessionContext::new();
    let udf = fruits_functions::featurize::udf(model_dir);
    ctx.register_udf(udf.clone());
    let schema = Arc::new(Schema::new(vec![Field::new("path", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(paths))])?;
    let df = ctx.read_batch(batch)?;
    df.select(vec![udf
        .call(vec![col("path"), lit(224i64), lit(sha.to_string())])
        .alias("r")])?
        .collect()
        .await
}

#[tokio::test]
#[ignore = "needs the installed model (`fruits model install`); scripts/test runs it"]
async fn bad_objects_become_error_rows_beside_good_features() {
    let sha = Manifest::load(&fruits_backbone::default_model_dir())
        .expect("run `fruits model install`")
        .onnx
        .sha256;
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.jpg");
    std::fs::write(&text, "text").unwrap();
    let paths = vec![
        format!("file://{}", shared_image().display()),
        format!("file://{}/vanished.jpg", tmp.path().display()),
        format!("file://{}", text.display()),
    ];
    let batches = run(paths, &sha).await.unwrap();
    let r = batches[0].column(0).as_struct();
    let (features, errors) = (r.column(0).as_fixed_size_list(), r.column(1).as_string::<i32>());
    assert_eq!(r.len(), 3);
    assert!(
        features.is_valid(0) && errors.is_null(0),
        "the real image has features: {errors:?}"
    );
    assert_eq!(errors.value(1), "object not found (deleted after listing?)");
    assert!(errors.value(2).contains("not a supported image"), "{}", errors.value(2));
    assert!(features.is_null(1) && features.is_null(2));
}

#[tokio::test]
#[ignore = "needs the installed model (`fruits model install`); scripts/test runs it"]
async fn a_job_planned_for_another_model_is_refused() {
    let err = run(vec![format!("file://{}", shared_image().display())], "0000")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not the job's model"), "{err}");
}

#[tokio::test]
#[ignore = "needs the installed model (`fruits model install`); scripts/test runs it"]
async fn training_views_are_reproducible_crops_and_view_zero_is_the_image() {
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::Float32Type;
    let sha = Manifest::load(&fruits_backbone::default_model_dir())
        .expect("run `fruits model install`")
        .onnx
        .sha256;
    let path = format!("file://{}", shared_image().display());
    let ctx = SessionContext::new();
    let udf = fruits_functions::featurize::udf(fruits_backbone::default_model_dir());
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("view", DataType::Int32, false),
    ]));
    let views = [0, 1, 2, 1];
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![path.clone(); views.len()])),
            Arc::new(Int32Array::from(views.to_vec())),
        ],
    )
    .unwrap();
    let call = |args| udf.call(args);
    let viewed = ctx
        .read_batch(batch)
        .unwrap()
        .select(vec![call(vec![
            col("path"),
            lit(224i64),
            lit(sha.clone()),
            col("view"),
            lit(7i64),
        ])
        .alias("r")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let r = viewed[0].column(0).as_struct();
    let f = r.column(0).as_fixed_size_list();
    let row = |i: usize| f.value(i).as_primitive::<Float32Type>().values().to_vec();
    let whole = run(vec![path], &sha).await.unwrap();
    let whole = whole[0].column(0).as_struct().column(0).as_fixed_size_list().value(0);
    assert_eq!(
        row(0),
        whole.as_primitive::<Float32Type>().values().to_vec(),
        "view 0 is the image"
    );
    assert_eq!(row(1), row(3), "a view is a function of (seed, path, index)");
    assert_ne!(row(1), row(0));
    assert_ne!(row(1), row(2));
}
