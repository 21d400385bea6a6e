//! `pca_project(features, k, model_uri, model_sha256)`: projects each vector
//! with a fitted [`Pca`] on the executors. The model is read once per process
//! from object storage (with the executor's own credentials) and checked
//! against the sha256 the job planned with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use fruits_storage::ObjectUri;

use fruits_pca::Pca;

pub const NAME: &str = "pca_project";

pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(PcaProject::default())
}

/// `FixedSizeList<Float32, k>`: the `pca` column.
pub fn pca_type(k: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), k as i32)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PcaProject {
    signature: Signature,
}

impl Default for PcaProject {
    fn default() -> Self {
        Self {
            signature: Signature::any(4, Volatility::Immutable),
        }
    }
}

fn constant_k(arg: Option<&ScalarValue>) -> Result<usize> {
    match arg {
        Some(ScalarValue::Int64(Some(k))) if *k > 0 => Ok(*k as usize),
        other => exec_err!("{NAME}: k must be a positive Int64 constant, got {other:?}"),
    }
}

fn constant_str(arg: &ColumnarValue, what: &str) -> Result<String> {
    match arg {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
        _ => exec_err!("{NAME}: {what} must be a string constant"),
    }
}

impl ScalarUDFImpl for PcaProject {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        exec_err!("{NAME}: the type depends on k (return_field_from_args)")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let k = constant_k(args.scalar_arguments.get(1).copied().flatten())?;
        Ok(Arc::new(Field::new(NAME, pca_type(k), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [features, k, uri, sha] = &args.args[..] else {
            return exec_err!("{NAME} takes (features, k, model_uri, model_sha256)");
        };
        let k = match k {
            ColumnarValue::Scalar(s) => constant_k(Some(s))?,
            _ => return exec_err!("{NAME}: k must be a constant"),
        };
        let pca = model(&constant_str(uri, "model_uri")?, &constant_str(sha, "model_sha256")?)?;
        if pca.k != k {
            return exec_err!("{NAME}: the model has {} components, the plan expects {k}", pca.k);
        }
        let features = features.to_array(args.number_rows)?;
        let list = features.as_fixed_size_list();
        if list.value_length() as usize != pca.dim {
            return exec_err!(
                "{NAME}: vectors of {} values, the model takes {}",
                list.value_length(),
                pca.dim
            );
        }
        project_list(&pca, list).map(|a| ColumnarValue::Array(Arc::new(a)))
    }
}

/// Projects every valid vector; null rows stay null.
fn project_list(pca: &Pca, list: &FixedSizeListArray) -> Result<FixedSizeListArray> {
    let values = list.values().as_primitive::<Float32Type>().values();
    let dim = pca.dim;
    let start = list.offset() * dim;
    let rows = &values[start..start + list.len() * dim];
    let projected = pca
        .project(rows)
        .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        pca.k as i32,
        Arc::new(Float32Array::from(projected)),
        list.nulls().cloned(),
    )?)
}

/// The model at `uri`, read once per process and checked against `sha256`.
fn model(uri: &str, sha256: &str) -> Result<Arc<Pca>> {
    static MODELS: OnceLock<Mutex<HashMap<String, Arc<Pca>>>> = OnceLock::new();
    let models = MODELS.get_or_init(Default::default);
    if let Some(pca) = models.lock().expect("not poisoned").get(sha256) {
        return Ok(Arc::clone(pca));
    }
    let bytes = read_model(uri).map_err(|e| datafusion::error::DataFusionError::Execution(format!("{NAME}: {e}")))?;
    if fruits_common::sha256_hex(&bytes) != sha256 {
        return exec_err!("{NAME}: the model at {uri} is not the one the job was planned with (sha256 differs)");
    }
    let pca = Pca::from_json(uri, &bytes).map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
    let pca = Arc::new(pca);
    models
        .lock()
        .expect("not poisoned")
        .insert(sha256.into(), Arc::clone(&pca));
    Ok(pca)
}

/// Reads on a thread of its own: this runs inside the engine's runtime,
/// where blocking on another future is not allowed.
fn read_model(uri: &str) -> Result<bytes::Bytes, String> {
    let uri = uri.to_string();
    std::thread::spawn(move || {
        let object = ObjectUri::parse(&uri).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("PCA model {uri}: {e}"))?;
        rt.block_on(object.read()).map_err(|e| e.to_string())
    })
    .join()
    .expect("the model reader does not panic")
}
