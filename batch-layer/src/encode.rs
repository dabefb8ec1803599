//! Per-row encodings computed once per date, before the cube's aggregate queries.
//!
//! A view's cube runs one query per granularity and grouping set (a dozen for the example
//! view), and each would otherwise hash and compare every `count_distinct` value as text
//! again. So after deduplication each such field gets two extra columns, computed in one pass:
//!
//! - [`id_column`]: the value interned to a dense `u32` (equal text, equal id), so an exact
//!   distinct count per group is a count of distinct small integers;
//! - [`hll_column`]: the value's HyperLogLog observation (`register << 8 | rank`, what
//!   `PFADD` of the same text would set), so building the Redis-compatible sketch needs no
//!   hashing.
//!
//! The text is the value cast to Utf8, as the speed layer's `PFADD` sees it. Likewise each
//! `quantile` field gets [`sketch_column`]: the value's quantile-sketch bucket
//! ([`SketchBucket::code`]), so the sketches need no logarithm per row and query.

use std::sync::Arc;

use arrow::array::Float64Array;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Builder};
use arrow::compute::cast;
use arrow::datatypes::Float64Type;
use arrow::datatypes::{DataType, Field, Schema};
use hashbrown::HashTable;
use tributary_shared::hll::{element_hash, register_of_hash};
use tributary_shared::sketch::SketchBucket;

/// Name of the interned-id column of `field`.
pub fn id_column(field: &str) -> String {
    format!("__id:{field}")
}

/// Name of the HyperLogLog-observation column of `field`.
pub fn hll_column(field: &str) -> String {
    format!("__hll:{field}")
}

/// Name of the quantile-sketch bucket column of `field`.
pub fn sketch_column(field: &str) -> String {
    format!("__qb:{field}")
}

/// Packs an observation: register index (14 bits) and rank (≤ 51) in one `u32`.
pub fn pack_observation(index: usize, rank: u8) -> u32 {
    ((index as u32) << 8) | rank as u32
}

/// Inverse of [`pack_observation`].
pub fn unpack_observation(packed: u32) -> (usize, u8) {
    ((packed >> 8) as usize, (packed & 0xff) as u8)
}

/// Text → dense id, keyed by the same 64-bit hash the HyperLogLog uses (one hash per value).
#[derive(Default)]
struct Interner {
    table: HashTable<(u64, u32)>,
    /// Text of each id, for the equality check on a hash match.
    texts: Vec<Box<[u8]>>,
}

impl Interner {
    fn id(&mut self, hash: u64, text: &[u8]) -> u32 {
        let texts = &mut self.texts;
        let entry = self.table.entry(
            hash,
            |(h, id)| *h == hash && *texts[*id as usize] == *text,
            |(h, _)| *h,
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(e) => e.get().1,
            hashbrown::hash_table::Entry::Vacant(e) => {
                let id = texts.len() as u32;
                texts.push(text.into());
                e.insert((hash, id));
                id
            }
        }
    }
}

/// Appends the id and observation columns of every field in `fields` (the distinct-count
/// fields) and the sketch-bucket column of every field in `quantile_fields` to each batch. Ids
/// are interned across all batches of the date, so they are comparable between batches.
pub fn add_encoded_columns(
    batches: Vec<RecordBatch>,
    fields: &[String],
    quantile_fields: &[String],
) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    if fields.is_empty() && quantile_fields.is_empty() {
        return Ok(batches);
    }
    let mut interners: Vec<Interner> = fields.iter().map(|_| Interner::default()).collect();
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let schema = batch.schema();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let mut schema_fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        for (field, interner) in fields.iter().zip(interners.iter_mut()) {
            let values = batch.column_by_name(field).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("no column {field:?}"))
            })?;
            let text = cast(values, &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            let mut ids = UInt32Builder::with_capacity(text.len());
            let mut obs = UInt32Builder::with_capacity(text.len());
            for row in 0..text.len() {
                if text.is_null(row) {
                    ids.append_null();
                    obs.append_null();
                    continue;
                }
                let bytes = text.value(row).as_bytes();
                let hash = element_hash(bytes);
                ids.append_value(interner.id(hash, bytes));
                let (index, rank) = register_of_hash(hash);
                obs.append_value(pack_observation(index, rank));
            }
            columns.push(Arc::new(ids.finish()));
            schema_fields.push(Arc::new(Field::new(
                id_column(field),
                DataType::UInt32,
                true,
            )));
            columns.push(Arc::new(obs.finish()));
            schema_fields.push(Arc::new(Field::new(
                hll_column(field),
                DataType::UInt32,
                true,
            )));
        }
        for field in quantile_fields {
            let values = batch.column_by_name(field).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("no column {field:?}"))
            })?;
            let nums = cast(values, &DataType::Float64)?;
            let nums: &Float64Array = nums.as_primitive::<Float64Type>();
            let codes: arrow::array::UInt32Array = nums
                .iter()
                .map(|x| x.and_then(SketchBucket::of).map(SketchBucket::code))
                .collect();
            columns.push(Arc::new(codes));
            schema_fields.push(Arc::new(Field::new(
                sketch_column(field),
                DataType::UInt32,
                true,
            )));
        }
        out.push(RecordBatch::try_new(
            Arc::new(Schema::new(schema_fields)),
            columns,
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, UInt32Array};
    use tributary_shared::hll::register_of;

    #[test]
    fn ids_are_dense_and_shared_across_batches_and_observations_match_pfadd() -> anyhow::Result<()>
    {
        let a = RecordBatch::try_from_iter(vec![
            (
                "u",
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    None,
                    Some("y"),
                    Some("x"),
                ])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![1, 2, 3, 1])) as ArrayRef,
            ),
        ])?;
        let b = RecordBatch::try_from_iter(vec![
            (
                "u",
                Arc::new(StringArray::from(vec![Some("y"), Some("z")])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![3, 10])) as ArrayRef),
        ])?;
        let out = add_encoded_columns(vec![a, b], &["u".into(), "n".into()], &["n".into()])?;
        let ids = |i: usize, col: &str| -> Vec<Option<u32>> {
            let c = out[i].column_by_name(col).expect("column");
            let c = c.as_any().downcast_ref::<UInt32Array>().expect("u32");
            c.iter().collect()
        };
        assert_eq!(ids(0, "__id:u"), vec![Some(0), None, Some(1), Some(0)]);
        assert_eq!(ids(1, "__id:u"), vec![Some(1), Some(2)]);
        assert_eq!(ids(0, "__id:n"), vec![Some(0), Some(1), Some(2), Some(0)]);
        assert_eq!(ids(1, "__id:n"), vec![Some(2), Some(3)]);
        let obs = ids(1, "__hll:n");
        let (index, rank) = register_of(b"10");
        assert_eq!(obs[1], Some(pack_observation(index, rank)));
        assert_eq!(
            unpack_observation(pack_observation(index, rank)),
            (index, rank)
        );
        let codes = ids(1, "__qb:n");
        assert_eq!(codes[1], SketchBucket::of(10.0).map(SketchBucket::code));
        Ok(())
    }
}
