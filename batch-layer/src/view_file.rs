//! The view-file format: the Parquet files a batch run writes per view, granularity and date,
//! and the read API reads back. Writer and reader share these names and this schema, so the
//! format is defined here, apart from the engine that fills it.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tributary_shared::config::AggKind;
use tributary_shared::view::ViewPlan;

/// Column names of view files.
pub mod columns {
    pub const T: &str = "t";
    pub const GSET: &str = "gset";
    pub const ROWS: &str = "rows";
    pub fn dim(name: &str) -> String {
        format!("dim:{name}")
    }
    pub fn value(measure: &str) -> String {
        format!("m:{measure}")
    }
    pub fn avg_sum(measure: &str) -> String {
        format!("m:{measure}:sum")
    }
    pub fn avg_n(measure: &str) -> String {
        format!("m:{measure}:n")
    }
    pub fn sketch(measure: &str) -> String {
        format!("s:{measure}")
    }
}

/// Schema of a view file: bucket start (`t`, epoch ms), the grouping set (`gset`, bit `i` set
/// when dimension `i` is grouped; an ungrouped dimension is null), one column per dimension,
/// the row count, then per measure its exact value (avg: sum and count) and, for
/// `count_distinct`/`quantile`, the sketch (Redis HyperLogLog bytes / encoded quantile sketch).
pub fn view_schema(view: &ViewPlan) -> SchemaRef {
    let mut fields = vec![
        Field::new(columns::T, DataType::Int64, false),
        Field::new(columns::GSET, DataType::Int32, false),
    ];
    for d in &view.dimensions {
        fields.push(Field::new(columns::dim(&d.name), DataType::Utf8, true));
    }
    fields.push(Field::new(columns::ROWS, DataType::Int64, false));
    for m in &view.measures {
        match m.agg {
            AggKind::Count => {
                fields.push(Field::new(columns::value(&m.name), DataType::Int64, true))
            }
            AggKind::Sum | AggKind::Min | AggKind::Max => {
                fields.push(Field::new(columns::value(&m.name), DataType::Float64, true))
            }
            AggKind::Avg => {
                fields.push(Field::new(
                    columns::avg_sum(&m.name),
                    DataType::Float64,
                    true,
                ));
                fields.push(Field::new(columns::avg_n(&m.name), DataType::Int64, true));
            }
            AggKind::CountDistinct => {
                fields.push(Field::new(columns::value(&m.name), DataType::Int64, true));
                fields.push(Field::new(columns::sketch(&m.name), DataType::Binary, true));
            }
            AggKind::Quantile => {
                fields.push(Field::new(columns::value(&m.name), DataType::Float64, true));
                fields.push(Field::new(columns::sketch(&m.name), DataType::Utf8, true));
            }
        }
    }
    Arc::new(Schema::new(fields))
}

/// A view file's bytes: one granularity's rows of a date, zstd Parquet.
pub fn encode_view_file(batch: &RecordBatch) -> Result<Vec<u8>, ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}
