//! The ledger's file format: one Parquet file of [`LedgerRow`]s, a column per field.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_shared::Granularity;
use tributary_shared::config::AggKind;

use super::{LedgerError, LedgerRow};

fn schema() -> Arc<Schema> {
    let f = |name: &str, dt: DataType, nullable: bool| Field::new(name, dt, nullable);
    Arc::new(Schema::new(vec![
        f("granularity", DataType::Utf8, false),
        f("t", DataType::Int64, false),
        f("measure", DataType::Utf8, false),
        f("agg", DataType::Utf8, false),
        f("speed", DataType::Float64, true),
        f("batch", DataType::Float64, true),
        f("abs_error", DataType::Float64, true),
        f("rel_error", DataType::Float64, false),
        f("groups", DataType::Int64, false),
        f("group_p99_rel_error", DataType::Float64, true),
        f("group_max_rel_error", DataType::Float64, true),
        f("run_id", DataType::Utf8, false),
        f("settled_ms", DataType::Int64, false),
    ]))
}

/// The rows as a Parquet file.
pub fn encode(rows: &[LedgerRow]) -> Result<Vec<u8>, LedgerError> {
    let strings = |f: &dyn Fn(&LedgerRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let floats = |f: &dyn Fn(&LedgerRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(f)))
    };
    let ints = |f: &dyn Fn(&LedgerRow) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            strings(&|r| r.granularity.as_str()),
            ints(&|r| r.t_ms),
            strings(&|r| r.measure.as_str()),
            strings(&|r| r.agg.as_str()),
            floats(&|r| r.speed),
            floats(&|r| r.batch),
            floats(&|r| r.abs_error),
            floats(&|r| Some(r.rel_error)),
            ints(&|r| r.groups as i64),
            floats(&|r| r.group_p99_rel_error),
            floats(&|r| r.group_max_rel_error),
            strings(&|r| r.run_id.as_str()),
            ints(&|r| r.settled_ms),
        ],
    )?;
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(buf)
}

/// A ledger file's rows.
pub fn decode(path: &str, bytes: Bytes) -> Result<Vec<LedgerRow>, LedgerError> {
    let layout = |what: &str| LedgerError::Layout {
        path: path.to_string(),
        what: what.to_string(),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| layout(&format!("no column {name}")))
        };
        let s = |name: &str| {
            col(name)?
                .as_string_opt::<i32>()
                .cloned()
                .ok_or_else(|| layout(&format!("{name} is not text")))
        };
        let f = |name: &str| {
            col(name)?
                .as_primitive_opt::<Float64Type>()
                .cloned()
                .ok_or_else(|| layout(&format!("{name} is not a float")))
        };
        let i = |name: &str| {
            col(name)?
                .as_primitive_opt::<Int64Type>()
                .cloned()
                .ok_or_else(|| layout(&format!("{name} is not an integer")))
        };
        let (gran, t, measure, agg) = (s("granularity")?, i("t")?, s("measure")?, s("agg")?);
        let (speed, batch_v, abs, rel) =
            (f("speed")?, f("batch")?, f("abs_error")?, f("rel_error")?);
        let (groups, p99, max) = (
            i("groups")?,
            f("group_p99_rel_error")?,
            f("group_max_rel_error")?,
        );
        let (run_id, settled) = (s("run_id")?, i("settled_ms")?);
        let opt = |a: &Float64Array, row: usize| (!a.is_null(row)).then(|| a.value(row));
        for row in 0..batch.num_rows() {
            let granularity = gran
                .value(row)
                .parse::<Granularity>()
                .map_err(|_| layout("unknown granularity"))?;
            let agg = AggKind::parse(agg.value(row)).ok_or_else(|| layout("unknown aggregate"))?;
            out.push(LedgerRow {
                granularity,
                t_ms: t.value(row),
                measure: measure.value(row).to_string(),
                agg,
                speed: opt(&speed, row),
                batch: opt(&batch_v, row),
                abs_error: opt(&abs, row),
                rel_error: rel.value(row),
                groups: groups.value(row).max(0) as u64,
                group_p99_rel_error: opt(&p99, row),
                group_max_rel_error: opt(&max, row),
                run_id: run_id.value(row).to_string(),
                settled_ms: settled.value(row),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_parquet() {
        let row = LedgerRow {
            granularity: Granularity::Hour,
            t_ms: 1_763_719_200_000,
            measure: "buyers".into(),
            agg: AggKind::CountDistinct,
            speed: Some(101.0),
            batch: Some(100.0),
            abs_error: Some(1.0),
            rel_error: 0.01,
            groups: 12,
            group_p99_rel_error: Some(0.05),
            group_max_rel_error: None,
            run_id: "r1".into(),
            settled_ms: 1_763_722_800_000,
        };
        let bytes = encode(std::slice::from_ref(&row)).unwrap_or_default();
        let back = decode("x", Bytes::from(bytes)).unwrap_or_default();
        assert_eq!(back, vec![row]);
    }
}
