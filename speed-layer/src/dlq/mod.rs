//! The dead-letter topic `<topic>.dlq`: invalid events with the reason they were rejected.
//!
//! - [`producer`]: how the consumer writes dead letters (never dropped, see there);
//! - [`tools`]: `speed-layer dlq drain` / `dlq replay`, for operators.

pub mod producer;
pub mod tools;

pub use producer::DeadLetters;
pub use tools::{DeadLetter, drain, replay};
