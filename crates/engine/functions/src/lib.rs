//! The functions the engine runs on its executors: every DataFusion UDF and
//! UDAF of the product, in one place, so the client and every executor
//! register the same set by name.
//!
//! - [`featurize`]: `featurize(path, input_size, model_sha256)`, image bytes
//!   to the backbone's 1280-d vector (the featurize stage);
//! - [`pca_moments`]: the aggregate whose partial states are mergeable
//!   [`fruits_pca::Moments`] (the fit of the reduce stage);
//! - [`pca_project`]: `pca_project(features, k, model_uri, model_sha256)`,
//!   every row projected with the fitted PCA (the projection of the reduce stage).
//!
//! The maths lives in engine-free crates (`fruits-preprocess`,
//! `fruits-backbone`, `fruits-pca`); this crate only adapts them to Arrow
//! arrays. It depends on DataFusion, not on Ballista: the tests run the
//! functions on a plain DataFusion context.

pub mod featurize;
pub mod pca_moments;
pub mod pca_project;

use std::path::PathBuf;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

/// Every scalar function of the product; `model_dir` is this process's backbone.
pub fn scalar_functions(model_dir: impl Into<PathBuf>) -> Vec<ScalarUDF> {
    vec![featurize::udf(model_dir), pca_project::udf()]
}

/// Every aggregate function of the product.
pub fn aggregate_functions() -> Vec<AggregateUDF> {
    vec![pca_moments::udaf()]
}
