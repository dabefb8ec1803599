//! Per-row encodings, as scalar SQL functions computed once per event before the cube's
//! aggregates (which see every event once per grouping set: a dozen times for the example view).
//!
//! - `tributary_distinct_key(text)`: the value's 128-bit xxh3 hash, what the exact distinct
//!   count counts. A hash instead of a date-wide dictionary of the values keeps memory bounded
//!   and lets any executor encode any file; two values only count as one if their 128-bit
//!   hashes collide (for a billion distinct values the chance is below 10⁻²⁰).
//! - `tributary_hll_observation(text)`: the value's HyperLogLog observation
//!   (`register << 8 | rank`, what `PFADD` of the same text would set).
//! - `tributary_sketch_bucket(x)`: the value's quantile-sketch bucket ([`SketchBucket::code`]),
//!   so the sketches need no logarithm per row and grouping set.
//!
//! The text is the value cast to Utf8, as the speed layer's `PFADD` sees it (the SQL casts).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryBuilder, Float64Array, UInt32Array, UInt32Builder,
};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use tributary_shared::hll::{element_hash, register_of_hash};
use tributary_shared::sketch::SketchBucket;

/// Bytes of a distinct key.
pub const KEY_BYTES: i32 = 16;

/// Packs an observation: register index (14 bits) and rank (≤ 51) in one `u32`.
pub fn pack_observation(index: usize, rank: u8) -> u32 {
    ((index as u32) << 8) | rank as u32
}

/// Inverse of [`pack_observation`].
pub fn unpack_observation(packed: u32) -> (usize, u8) {
    ((packed >> 8) as usize, (packed & 0xff) as u8)
}

/// The distinct key of one text value.
pub fn distinct_key(text: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text)
}

/// Which encoding a [`Encoding`] function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    DistinctKey,
    HllObservation,
    SketchBucket,
}

/// One encoding function (they differ only in what a row becomes).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Encoding {
    kind: Kind,
    signature: Signature,
}

/// The encoding functions, registered with the aggregates.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    let text = || Signature::exact(vec![DataType::Utf8], Volatility::Immutable);
    [
        (Kind::DistinctKey, text()),
        (Kind::HllObservation, text()),
        (
            Kind::SketchBucket,
            Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        ),
    ]
    .into_iter()
    .map(|(kind, signature)| Arc::new(ScalarUDF::from(Encoding { kind, signature })))
    .collect()
}

impl ScalarUDFImpl for Encoding {
    fn name(&self) -> &str {
        match self.kind {
            Kind::DistinctKey => "tributary_distinct_key",
            Kind::HllObservation => "tributary_hll_observation",
            Kind::SketchBucket => "tributary_sketch_bucket",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::DistinctKey => DataType::FixedSizeBinary(KEY_BYTES),
            Kind::HllObservation | Kind::SketchBucket => DataType::UInt32,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return datafusion::common::exec_err!("{} takes one argument", self.name());
        };
        let out: ArrayRef = match self.kind {
            Kind::DistinctKey => {
                let text = input.as_string::<i32>();
                let mut keys = FixedSizeBinaryBuilder::with_capacity(text.len(), KEY_BYTES);
                for row in 0..text.len() {
                    if text.is_null(row) {
                        keys.append_null();
                    } else {
                        keys.append_value(distinct_key(text.value(row).as_bytes()).to_le_bytes())?;
                    }
                }
                Arc::new(keys.finish())
            }
            Kind::HllObservation => {
                let text = input.as_string::<i32>();
                let mut obs = UInt32Builder::with_capacity(text.len());
                for row in 0..text.len() {
                    if text.is_null(row) {
                        obs.append_null();
                    } else {
                        let (index, rank) =
                            register_of_hash(element_hash(text.value(row).as_bytes()));
                        obs.append_value(pack_observation(index, rank));
                    }
                }
                Arc::new(obs.finish())
            }
            Kind::SketchBucket => {
                let nums: &Float64Array = input.as_primitive::<Float64Type>();
                let codes: UInt32Array = nums
                    .iter()
                    .map(|x| x.and_then(SketchBucket::of).map(SketchBucket::code))
                    .collect();
                Arc::new(codes)
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{FixedSizeBinaryArray, StringArray};
    use datafusion::prelude::SessionContext;
    use tributary_shared::hll::register_of;

    #[tokio::test]
    async fn encodings_match_pfadd_and_the_sketch() -> anyhow::Result<()> {
        let ctx = SessionContext::new();
        crate::udaf::register(&ctx);
        let batch = arrow::array::RecordBatch::try_from_iter(vec![(
            "u",
            Arc::new(StringArray::from(vec![Some("10"), None, Some("2.5")])) as ArrayRef,
        )])?;
        ctx.register_batch("t", batch)?;
        let out = ctx
            .sql(
                "SELECT tributary_distinct_key(u) AS k, tributary_hll_observation(u) AS o, \
                 tributary_sketch_bucket(CAST(u AS DOUBLE)) AS q FROM t",
            )
            .await?
            .collect()
            .await?;
        let b = &out[0];
        let keys = b.column(0).as_any().downcast_ref::<FixedSizeBinaryArray>();
        let keys = keys.ok_or_else(|| anyhow::anyhow!("keys"))?;
        assert_eq!(keys.value(0), distinct_key(b"10").to_le_bytes());
        assert!(keys.is_null(1));
        let obs = b.column(1).as_primitive::<arrow::datatypes::UInt32Type>();
        let (index, rank) = register_of(b"10");
        assert_eq!(obs.value(0), pack_observation(index, rank));
        assert_eq!(
            unpack_observation(pack_observation(index, rank)),
            (index, rank)
        );
        let codes = b.column(2).as_primitive::<arrow::datatypes::UInt32Type>();
        assert_eq!(
            Some(codes.value(0)),
            SketchBucket::of(10.0).map(SketchBucket::code)
        );
        assert!(codes.is_null(1));
        Ok(())
    }
}
