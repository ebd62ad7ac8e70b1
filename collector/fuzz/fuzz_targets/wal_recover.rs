//! Recovery of the write-ahead log at open: `Wal::open` on a directory whose one segment,
//! `wal-00000000000000000001.log`, holds the input (with its chain of record checksums made to
//! match, as in the `wal` target), then `Wal::open_at` on what the first open left.
//!
//! Invariants: the first open replays exactly the records the scan finds and reports exactly
//! the gaps' records as lost (a torn tail is not a loss); its last sequence number is the last
//! record's; it leaves the segment holding exactly its valid records' bytes, and puts a copy in
//! `damaged/` exactly when there was a gap. The second open (checkpoint 0) replays the same
//! records and reports as lost exactly the sequence numbers no record holds, none as stored.
//!
//! run.sh runs this target with `-detect_leaks=0`: the log's writer thread finishes after
//! `close` returns, so every input would look like a leak candidate and pay a full leak scan.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use meshtrace_collector::fuzzing::Scan;
use meshtrace_collector::wal::{FsyncPolicy, Wal, WalConfig, DAMAGED_DIR};
use meshtrace_collector_fuzz::wal::{check_scan, fix_checksums, FROM_START};

fuzz_target!(|data: &[u8]| {
    let fixed = fix_checksums(data);
    let (scan, kept) = check_scan(&fixed, FROM_START);
    check_open(&fixed, &scan, &kept);
});

/// Where the log directories go: tmpfs when there is one (syncs cost nothing there).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

fn check_open(bytes: &[u8], scan: &Scan, kept: &[u8]) {
    let dir = tempfile::Builder::new()
        .prefix("meshtrace-fuzz-wal")
        .tempdir_in(scratch())
        .expect("scratch directory");
    let segment = dir.path().join("wal-00000000000000000001.log");
    std::fs::write(&segment, bytes).expect("writing the segment");
    let cfg = WalConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 4096,
        ..WalConfig::new(dir.path())
    };
    let expected = format!("{:?}", scan.records);

    let (wal, replayed) = Wal::open(cfg.clone()).expect("open");
    assert_eq!(
        format!("{replayed:?}"),
        expected,
        "open replays other records than the scan"
    );
    let lost: Vec<(u64, u64)> = wal
        .recovery_losses()
        .iter()
        .map(|l| (l.first_seq, l.last_seq))
        .collect();
    let gaps: Vec<(u64, u64)> = scan
        .gaps
        .iter()
        .filter(|g| g.first_lost <= g.last_lost)
        .map(|g| (g.first_lost, g.last_lost))
        .collect();
    assert_eq!(lost, gaps, "losses are not the gaps' records");
    let last = scan.records.last().map_or(0, |r| r.seq);
    assert_eq!(wal.last_seq(), last, "last_seq after open");
    block_on(wal.close()).expect("close");
    let on_disk = std::fs::read(&segment).expect("segment still there");
    assert!(
        on_disk == kept,
        "the segment after recovery is not its valid records"
    );
    assert_eq!(
        dir.path().join(DAMAGED_DIR).exists(),
        !scan.gaps.is_empty(),
        "damaged/ copy"
    );

    let (wal, again) = Wal::open_at(cfg, 0).expect("second open");
    assert_eq!(
        format!("{again:?}"),
        expected,
        "second open replays other records"
    );
    let mut losses = wal.recovery_losses().iter();
    let mut next = 1;
    for r in &again {
        if r.seq > next {
            let l = losses
                .next()
                .expect("missing sequence numbers not reported");
            assert_eq!((l.first_seq, l.last_seq), (next, r.seq - 1));
            assert!(!l.stored);
        }
        next = r.seq.saturating_add(1);
    }
    assert!(
        losses.next().is_none(),
        "losses at the second open: {:?}",
        wal.recovery_losses()
    );
    block_on(wal.close()).expect("close");
}
