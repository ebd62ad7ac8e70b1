//! The write-ahead log's segment scan (`wal::format::scan`, reached through
//! `meshtrace_collector::fuzzing`): what recovery reads each segment file with.
//!
//! The input is a segment's bytes. It is scanned as it is, and again with the checksum of every
//! record along its chain of headers (from offset 0) made to match, so that the fuzzer also
//! reaches payload decoding (postcard spans, OTLP requests) rather than stopping at checksums;
//! that one is scanned both as the first segment of a log and as a sealed segment between two
//! others. Invariants (`meshtrace_collector_fuzz::wal::check_scan`): records and gaps tile the
//! valid prefix in order; no record runs past the input; each record's range is its header's
//! length and its sequence number is the header's, strictly increasing and inside the bounds;
//! a gap's lost sequence numbers are those between its neighbours; damage is reported exactly
//! when the valid prefix is not the whole input; the valid records' bytes put together (what
//! recovery rewrites a damaged segment to) scan again as the same records, with no gap and no
//! damage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtrace_collector_fuzz::verbose;
use meshtrace_collector_fuzz::wal::{check_scan, fix_checksums, BETWEEN, FROM_START};

fuzz_target!(|data: &[u8]| {
    check_scan(data, FROM_START);
    let fixed = fix_checksums(data);
    check_scan(&fixed, BETWEEN);
    let (scan, _) = check_scan(&fixed, FROM_START);
    if verbose() {
        eprintln!(
            "wal: {} bytes -> {} records ({} spans), {} gaps, damage {:?}",
            data.len(),
            scan.records.len(),
            scan.records.iter().map(|r| r.spans.len()).sum::<usize>(),
            scan.gaps.len(),
            scan.damage
        );
    }
});
