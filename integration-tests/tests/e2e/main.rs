//! The whole platform on the real stack: speed layer, archive, batch run and serving layer
//! on one topic. Generated history with late events, producer duplicates and malformed
//! events; the batch runs; the API answers per bucket from the right layer, exactly where it
//! must be exact and within the sketches' bounds elsewhere. Then more events arrive, the batch
//! runs again, the horizon moves, and the answers stay right. Also: Redis down (batch still
//! served, speed buckets listed), the 400s, top, status, health, metrics and OpenAPI; exact-only
//! and `as_of` answers across the two runs; the speed accuracy ledger of the first run; the
//! OpenAPI document fuzzed against the server by schemathesis.
//!
//! The scenario runs once per test binary, in order ([`fixture`]), and records what each
//! phase saw; each test checks one phase's record, so a failure names its phase.

mod accuracy;
mod exact_as_of;
mod first_run;
mod fixture;
mod openapi;
mod second_run;
