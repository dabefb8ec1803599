use std::collections::BTreeMap;

use super::*;
use crate::aggregate::Outcome;
use crate::aggregate::tests::MIN;

/// The aggregate tests' views (5 minutes of lateness) with a 10-minute duplicate filter.
fn pipeline() -> Pipeline {
    crate::aggregate::tests::pipeline().with_dedup_window(10 * MIN, 48 * 60 * MIN)
}

/// Lines in time order with jitter, some late past the 5 minutes allowed, some repeated ids
/// (the dedup window is on), some malformed, some blank.
fn lines() -> Vec<String> {
    let t0 = 1_000 * 60 * MIN;
    let mut out = Vec::new();
    let mut x: u64 = 7;
    for i in 0..6_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = x >> 33;
        let mut t = t0 + i as i64 * 1_000 - (r % 90_000) as i64;
        if r.is_multiple_of(97) {
            t -= 20 * MIN; // late
        }
        let ty = if r.is_multiple_of(3) {
            "checkout"
        } else {
            "view"
        };
        let country = ["DE", "FR", "US", "BR"][(r % 4) as usize];
        // Multiples of 1/4: the sums are exact whatever the order of addition.
        let amount = (r % 4_000) as f64 / 4.0;
        let id = if r.is_multiple_of(53) {
            i.saturating_sub(3)
        } else {
            i
        };
        out.push(match r % 211 {
            0 => format!(r#"{{"event_id":"e{id}","event_time":{t}"#),
            1 => String::new(),
            _ => format!(
                r#"{{"event_id":"e{id}","event_time":{t},"type":"{ty}","country":"{country}","amount":{amount},"user_id":"u{}","latency_ms":{}}}"#,
                r % 500,
                r % 1_000
            ),
        });
    }
    out
}

type Canonical = (u64, u64, u64, BTreeMap<(String, i64, String), String>);

/// A flush's contents with groups by name and sets in order (group ids are per buffer).
fn canonical(flush: &Flush) -> Vec<Canonical> {
    flush
        .views
        .iter()
        .map(|vf| {
            let d = &vf.data;
            let cells = d
                .cells
                .iter()
                .map(|((g, bucket, gid), cell)| {
                    let mut distinct: Vec<Vec<&str>> = cell
                        .distinct
                        .iter()
                        .map(|s| s.iter().map(|v| &**v).collect())
                        .collect();
                    distinct.iter_mut().for_each(|v| v.sort());
                    let sketches: Vec<BTreeMap<String, u64>> = cell
                        .sketches
                        .iter()
                        .map(|m| m.iter().map(|(b, n)| (format!("{b:?}"), *n)).collect())
                        .collect();
                    let value = format!(
                        "{} {:?} {distinct:?} {sketches:?}",
                        cell.count, cell.numeric
                    );
                    (
                        (format!("{g:?}"), *bucket, d.groups[*gid as usize].clone()),
                        value,
                    )
                })
                .collect();
            (d.applied, d.late_dropped, d.duplicates, cells)
        })
        .collect()
}

#[test]
fn chunks_on_several_threads_aggregate_exactly_as_one_record_at_a_time() {
    let lines = lines();
    let now = 1_000 * 60 * MIN + 6_000_000;

    let mut one = pipeline();
    let (mut valid, mut invalid, mut offset) = (0u64, 0u64, 0i64);
    for line in lines.iter().filter(|l| !l.is_empty()) {
        offset += 1;
        match one.process(0, offset, line.as_bytes(), now) {
            Outcome::Processed => valid += 1,
            Outcome::Invalid(_) => invalid += 1,
            Outcome::AlreadyApplied => unreachable!("no restored progress"),
        }
    }
    let expected = one.take_flush().expect("a flush");

    let mut chunked = pipeline();
    let mut summary = ReplaySummary::default();
    let mut dlq = Vec::new();
    let mut workers: Vec<Vec<ViewBuffer>> = (0..3)
        .map(|_| {
            chunked
                .views()
                .iter()
                .map(|_| ViewBuffer::default())
                .collect()
        })
        .collect();
    let text = lines.join("\n");
    let mut input = std::io::Cursor::new(text.into_bytes());
    let mut chunk = Chunk::default();
    loop {
        let more = chunk.fill(&mut input, 700).expect("read");
        ChunkRun {
            pipeline: &mut chunked,
            summary: &mut summary,
            dlq: Some(&mut dlq),
            now,
        }
        .process(&chunk, &mut workers)
        .expect("process");
        if !more {
            break;
        }
    }
    for buffers in &mut workers {
        chunked.absorb(buffers);
    }
    let got = chunked.take_flush().expect("a flush");

    assert_eq!((summary.valid, summary.invalid), (valid, invalid));
    assert!(invalid > 0, "the input has malformed lines");
    assert_eq!(dlq.iter().filter(|&&b| b == b'\n').count() as u64, invalid);
    assert_eq!(got.records, expected.records);
    let (got, expected) = (canonical(&got), canonical(&expected));
    assert!(
        expected[0].1 > 0 && expected[0].2 > 0,
        "late and duplicate events"
    );
    assert!(expected[0].3.len() > 100, "many cells");
    assert_eq!(got, expected);
}

#[test]
fn a_chunk_holds_the_non_empty_lines() {
    let mut input = std::io::Cursor::new(b"a\r\n\nbc\n\r\nd".to_vec());
    let mut chunk = Chunk::default();
    assert!(chunk.fill(&mut input, 2).expect("read"));
    assert_eq!((chunk.line(0), chunk.line(1)), (&b"a"[..], &b"bc"[..]));
    assert!(!chunk.fill(&mut input, 2).expect("read"));
    assert_eq!(chunk.lines.len(), 1);
    assert_eq!(chunk.line(0), b"d");
    assert_eq!(split(5, 2), vec![0..2, 2..5]);
    assert_eq!(split(0, 3), vec![0..0, 0..0, 0..0]);
}
