//! `pca_moments(features)`: the aggregate function whose partial state is a
//! [`Moments`]. Partitions accumulate, the engine merges the states (one per
//! partition, across executors) and returns one struct `{n, sum, gram}`,
//! which [`from_array`] turns back into a [`Moments`] for the fit.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray, StructArray, UInt64Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float32Type, Float64Type, UInt64Type};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};

use fruits_pca::Moments;

pub const NAME: &str = "pca_moments";

pub fn udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(PcaMoments::default())
}

fn list_f64() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, false)))
}

fn fields() -> Fields {
    Fields::from(vec![
        Field::new("n", DataType::UInt64, false),
        Field::new("sum", list_f64(), false),
        Field::new("gram", list_f64(), false),
    ])
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PcaMoments {
    signature: Signature,
}

impl Default for PcaMoments {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for PcaMoments {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match &args[0] {
            DataType::FixedSizeList(f, _) if f.data_type() == &DataType::Float32 => Ok(DataType::Struct(fields())),
            other => exec_err!("{NAME} takes FixedSizeList<Float32, d> vectors, got {other}"),
        }
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MomentsAccumulator(None)))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(fields().iter().cloned().collect())
    }
}

/// `None` until the first row tells the dimension.
#[derive(Debug)]
struct MomentsAccumulator(Option<Moments>);

impl MomentsAccumulator {
    fn moments(&mut self, dim: usize) -> Result<&mut Moments> {
        let m = self.0.get_or_insert_with(|| Moments::new(dim));
        if m.dim != dim {
            return exec_err!("{NAME}: vectors of {dim} values after vectors of {}", m.dim);
        }
        Ok(m)
    }
}

impl Accumulator for MomentsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let list = values[0].as_fixed_size_list();
        let dim = list.value_length() as usize;
        let mut rows: Vec<f32> = Vec::with_capacity(list.len() * dim);
        for i in 0..list.len() {
            // Null vectors (rows without features) do not count.
            if list.is_valid(i) {
                rows.extend_from_slice(list.value(i).as_primitive::<Float32Type>().values());
            }
        }
        if !rows.is_empty() {
            self.moments(dim)?.add_rows(&rows);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states[0].as_primitive::<UInt64Type>();
        let (sum, gram) = (states[1].as_list::<i32>(), states[2].as_list::<i32>());
        for i in 0..n.len() {
            if n.value(i) == 0 {
                continue;
            }
            let part = Moments {
                dim: sum.value(i).len(),
                n: n.value(i),
                sum: sum.value(i).as_primitive::<Float64Type>().values().to_vec(),
                gram: gram.value(i).as_primitive::<Float64Type>().values().to_vec(),
            };
            self.moments(part.dim)?
                .merge(&part)
                .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let empty = Moments::new(0);
        let m = self.0.as_ref().unwrap_or(&empty);
        Ok(vec![
            ScalarValue::UInt64(Some(m.n)),
            list_scalar(&m.sum),
            list_scalar(&m.gram),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let state = self.state()?;
        let columns: Vec<ArrayRef> = state.iter().map(|s| s.to_array()).collect::<Result<_>>()?;
        Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(
            fields(),
            columns,
            None,
        )?)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.0.as_ref().map_or(0, |m| 8 * (m.sum.len() + m.gram.len()))
    }
}

fn list_scalar(values: &[f64]) -> ScalarValue {
    let list = ListArray::new(
        Arc::new(Field::new_list_field(DataType::Float64, false)),
        OffsetBuffer::from_lengths([values.len()]),
        Arc::new(Float64Array::from(values.to_vec())),
        None,
    );
    ScalarValue::List(Arc::new(list))
}

/// The merged moments from the aggregate's result (one struct row).
pub fn from_array(result: &dyn Array) -> Result<Moments> {
    let Some(s) = result.as_any().downcast_ref::<StructArray>() else {
        return exec_err!("{NAME}: expected a struct result");
    };
    let n = s
        .column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .map_or(0, |a| a.value(0));
    let (sum, gram) = (s.column(1).as_list::<i32>(), s.column(2).as_list::<i32>());
    let sum = sum.value(0).as_primitive::<Float64Type>().values().to_vec();
    Ok(Moments {
        dim: sum.len(),
        n,
        sum,
        gram: gram.value(0).as_primitive::<Float64Type>().values().to_vec(),
    })
}
