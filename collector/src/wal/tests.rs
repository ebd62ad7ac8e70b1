//! Tests of the write-ahead log: replay, sequence numbers, torn tails, truncation, overload and
//! concurrency, against real files in a temporary directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtrace_model::{AttrValue, KeyValue, Span, SpanKind, StatusCode};

use super::*;

fn cfg(dir: &Path) -> WalConfig {
    WalConfig {
        retry_after: Duration::from_millis(250),
        ..WalConfig::new(dir)
    }
}

/// A batch of `n` realistic spans, distinguishable by `tag`.
fn batch(tag: u64, n: usize) -> Arc<Vec<Span>> {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: [(tag % 251) as u8; 16],
            span_id: (tag * 1000 + i as u64).to_le_bytes(),
            parent_span_id: (i > 0).then_some([1; 8]),
            name: format!("op-{tag}-{i}"),
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_000_000_000 + tag as i64,
            duration_nano: 1_000 + i as i64,
            status_code: StatusCode::Ok,
            service_name: "checkout".into(),
            resource_attributes: vec![KeyValue::string("k8s.pod.name", "checkout-7d9f")],
            attributes: vec![
                KeyValue::string("http.method", "GET"),
                KeyValue::new("http.status_code", AttrValue::Int(200)),
            ],
            ..Span::default()
        })
        .collect();
    Arc::new(spans)
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn total_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Appends tags `tags` one after another and returns their sequence numbers.
async fn append_all(wal: &Wal, tags: std::ops::Range<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for tag in tags {
        seqs.push(wal.append(batch(tag, 3)).await.unwrap());
    }
    seqs
}

#[tokio::test]
async fn append_then_reopen_replays_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(wal.last_seq(), 0);
    let seqs = append_all(&wal, 0..10).await;
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(wal.last_seq(), 10);
    let stats = wal.stats();
    assert_eq!((stats.records, stats.spans), (10, 30));
    assert!(stats.fsyncs >= stats.group_commits && stats.group_commits >= 1);
    assert_eq!(wal.bytes_on_disk(), total_size(dir.path()));
    assert_eq!(stats.bytes_written, total_size(dir.path()));
    wal.close().await.unwrap();

    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(replayed.len(), 10);
    for (i, r) in replayed.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.spans, *batch(i as u64, 3));
    }
    assert_eq!(wal.last_seq(), 10);
    assert_eq!(wal.bytes_on_disk(), total_size(dir.path()));
}

#[tokio::test]
async fn otlp_request_records_replay_as_their_spans_among_span_records() {
    use crate::decode::otlp::{decode_protobuf, to_request};
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(dir.path())).unwrap();
    let request = to_request(&batch(1, 4)).encode_to_vec();
    let decoded = decode_protobuf(&request, &crate::Limits::default()).unwrap();
    assert_eq!(wal.append(batch(0, 3)).await.unwrap(), 1);
    let record = Record::otlp(request.into(), decoded.spans.len()).unwrap();
    assert_eq!(wal.append_record(record).await.unwrap(), 2);
    assert_eq!(wal.append(batch(2, 3)).await.unwrap(), 3);
    assert_eq!(wal.stats().spans, 10);
    drop(wal); // no close: as after kill -9

    let (_, replayed) = Wal::open(cfg(dir.path())).unwrap();
    let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(replayed[0].spans, *batch(0, 3));
    assert_eq!(replayed[1].spans, decoded.spans);
    assert_eq!(replayed[2].spans, *batch(2, 3));
}

#[tokio::test]
async fn sequence_continues_after_reopen_and_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(dir.path())).unwrap();
    append_all(&wal, 0..3).await;
    // Dropped without close, as after a crash: acknowledged records are already on disk.
    drop(wal);
    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(
        replayed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(append_all(&wal, 3..5).await, vec![4, 5]);
    wal.close().await.unwrap();
    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(
        replayed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(replayed[4].spans, *batch(4, 3));
    wal.advance_past(100);
    assert_eq!(wal.append(batch(9, 1)).await.unwrap(), 101);
}

/// Writes five records, damages the last segment with `damage`, and checks that reopening
/// keeps exactly `survivors` records and trims the file to them.
async fn check_torn_tail(damage: impl FnOnce(&Path, u64), survivors: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(dir.path())).unwrap();
    append_all(&wal, 0..4).await;
    let before_last = wal.bytes_on_disk();
    append_all(&wal, 4..5).await;
    let full = wal.bytes_on_disk();
    wal.close().await.unwrap();
    let file = dir.path().join(&segment_files(dir.path())[0]);
    damage(&file, before_last);

    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(replayed.len() as u64, survivors);
    for (i, r) in replayed.iter().enumerate() {
        assert_eq!((r.seq, &r.spans), (i as u64 + 1, &*batch(i as u64, 3)));
    }
    let expected_len = if survivors == 5 { full } else { before_last };
    assert_eq!(fs::metadata(&file).unwrap().len(), expected_len);
    assert_eq!(wal.bytes_on_disk(), expected_len);
    // Writing resumes right after the last good record and replays cleanly.
    assert_eq!(wal.append(batch(50, 2)).await.unwrap(), survivors + 1);
    wal.close().await.unwrap();
    let (_, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(replayed.len() as u64, survivors + 1);
    assert_eq!(replayed.last().unwrap().spans, *batch(50, 2));
}

#[tokio::test]
async fn garbage_after_the_last_record_is_cut() {
    check_torn_tail(
        |file, _| {
            let mut f = OpenOptions::new().append(true).open(file).unwrap();
            f.write_all(b"\x07\x00\x00\x00garbage that is not a record")
                .unwrap();
        },
        5,
    )
    .await;
}

#[tokio::test]
async fn record_cut_mid_way_is_dropped() {
    check_torn_tail(
        |file, _| {
            let len = fs::metadata(file).unwrap().len();
            OpenOptions::new()
                .write(true)
                .open(file)
                .unwrap()
                .set_len(len - 5)
                .unwrap();
        },
        4,
    )
    .await;
}

#[tokio::test]
async fn flipped_byte_in_the_last_record_is_dropped() {
    check_torn_tail(
        |file, last_start| {
            let mut bytes = fs::read(file).unwrap();
            let i = last_start as usize + 30;
            bytes[i] ^= 0x40;
            fs::write(file, bytes).unwrap();
        },
        4,
    )
    .await;
}

#[tokio::test]
async fn damaged_length_in_the_last_header_is_dropped() {
    check_torn_tail(
        |file, last_start| {
            let mut bytes = fs::read(file).unwrap();
            bytes[last_start as usize + 3] = 0x7f;
            fs::write(file, bytes).unwrap();
        },
        4,
    )
    .await;
}

/// Found by the `wal_recover` fuzz target: the header is not covered by the checksum, and a
/// sequence number damaged to `u64::MAX` made recovery overflow (a panic in debug builds; in
/// release the log went on from sequence number 1, below the records it had replayed).
#[tokio::test]
async fn damaged_sequence_number_in_the_last_header_is_dropped() {
    check_torn_tail(
        |file, last_start| {
            let mut bytes = fs::read(file).unwrap();
            let at = last_start as usize + 8;
            bytes[at..at + 8].fill(0xff);
            fs::write(file, bytes).unwrap();
        },
        4,
    )
    .await;
}

/// The files in `damaged/`, where a segment is copied before it is rewritten.
fn damaged_copies(dir: &Path) -> usize {
    fs::read_dir(dir.join(DAMAGED_DIR)).map_or(0, |d| d.count())
}

#[tokio::test]
async fn damage_in_a_sealed_segment_loses_only_its_record() {
    for (checkpoint, lost, skipped) in [(0, 1, 0), (1, 0, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig {
            segment_bytes: 1,
            ..cfg(dir.path())
        })
        .unwrap();
        append_all(&wal, 0..3).await;
        wal.close().await.unwrap();
        let first = dir.path().join(&segment_files(dir.path())[0]);
        let mut bytes = fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&first, bytes).unwrap();

        let (wal, replayed) = Wal::open_at(cfg(dir.path()), checkpoint).unwrap();
        let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![2, 3], "the records after the damage are kept");
        let stats = wal.stats();
        assert_eq!((stats.records_lost, stats.records_skipped), (lost, skipped));
        let loss = &wal.recovery_losses()[0];
        assert_eq!((loss.first_seq, loss.last_seq, loss.offset), (1, 1, 0));
        assert!(loss.reason.contains("checksum"), "{}", loss.reason);
        assert_eq!(damaged_copies(dir.path()), 1);
        assert_eq!(wal.append(batch(9, 1)).await.unwrap(), 4);
        wal.close().await.unwrap();
        // Rewritten: the next open meets no damage (no second copy); a record lost above the
        // checkpoint is still reported, now as a sequence no segment holds.
        let (wal, replayed) = Wal::open_at(cfg(dir.path()), checkpoint).unwrap();
        assert_eq!(replayed.len(), 3);
        assert_eq!(damaged_copies(dir.path()), 1);
        let still: Vec<(u64, u64)> = wal
            .recovery_losses()
            .iter()
            .map(|l| (l.first_seq, l.last_seq))
            .collect();
        assert_eq!(still, if lost == 1 { vec![(1, 1)] } else { vec![] });
    }
}

#[tokio::test]
async fn damage_in_the_middle_of_the_last_segment_keeps_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(dir.path())).unwrap();
    append_all(&wal, 0..2).await;
    let third = wal.bytes_on_disk();
    append_all(&wal, 2..5).await;
    wal.close().await.unwrap();
    let file = dir.path().join(&segment_files(dir.path())[0]);
    let mut bytes = fs::read(&file).unwrap();
    bytes[third as usize + 40] ^= 0x10;
    fs::write(&file, bytes).unwrap();

    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 4, 5],
        "a damaged record is not a torn tail"
    );
    assert_eq!(replayed[2].spans, *batch(3, 3));
    assert_eq!(wal.stats().records_lost, 1);
    let loss = &wal.recovery_losses()[0];
    assert_eq!((loss.first_seq, loss.last_seq, loss.offset), (3, 3, third));
    assert_eq!(damaged_copies(dir.path()), 1);
    assert_eq!(wal.append(batch(7, 1)).await.unwrap(), 6);
    wal.close().await.unwrap();
    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(replayed.len(), 5);
    assert!(wal.recovery_losses().is_empty());
}

#[tokio::test]
async fn sequences_no_segment_holds_above_the_checkpoint_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig {
        segment_bytes: 1,
        ..cfg(dir.path())
    })
    .unwrap();
    append_all(&wal, 0..5).await;
    wal.close().await.unwrap();
    // A segment file deleted by hand: record 3 is in neither Parquet nor the log.
    fs::remove_file(dir.path().join(format::segment_name(3))).unwrap();
    let (wal, replayed) = Wal::open_at(cfg(dir.path()), 1).unwrap();
    assert_eq!(replayed.len(), 4);
    assert_eq!(wal.stats().records_lost, 1);
    let loss = &wal.recovery_losses()[0];
    assert_eq!((loss.first_seq, loss.last_seq), (3, 3));
    assert!(loss.reason.contains("no log segment"), "{}", loss.reason);
    wal.close().await.unwrap();
    // Below the checkpoint nothing is missing: those spans are in Parquet.
    let (wal, _) = Wal::open_at(cfg(dir.path()), 3).unwrap();
    assert!(wal.recovery_losses().is_empty());
    wal.close().await.unwrap();
    // Without a checkpoint the log cannot tell a gap from a truncation.
    let (wal, _) = Wal::open(cfg(dir.path())).unwrap();
    assert!(wal.recovery_losses().is_empty());
}

#[tokio::test]
async fn empty_last_segment_and_stray_files_are_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(dir.path())).unwrap();
    append_all(&wal, 0..2).await;
    wal.close().await.unwrap();
    // As if the writer died right after creating the next segment.
    fs::write(dir.path().join(format::segment_name(3)), b"").unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let (wal, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(replayed.len(), 2);
    assert_eq!(wal.append(batch(7, 1)).await.unwrap(), 3);
    wal.close().await.unwrap();
    let (_, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(
        replayed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn truncate_through_deletes_only_covered_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = || WalConfig {
        segment_bytes: 1,
        ..cfg(dir.path())
    };
    let (wal, _) = Wal::open(tiny()).unwrap();
    // Sequential appends with a 1-byte limit: one record per segment.
    append_all(&wal, 0..5).await;
    assert_eq!(segment_files(dir.path()).len(), 5);
    assert_eq!(wal.stats().segments_created, 4);

    wal.truncate_through(0).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 5);
    wal.truncate_through(3).unwrap();
    let names = segment_files(dir.path());
    assert_eq!(
        names,
        vec![format::segment_name(4), format::segment_name(5)]
    );
    assert_eq!(wal.bytes_on_disk(), total_size(dir.path()));
    assert_eq!(wal.stats().segments_deleted, 3);

    // Everything covered: the active segment (seq 5) stays anyway.
    wal.truncate_through(u64::MAX).unwrap();
    assert_eq!(segment_files(dir.path()), vec![format::segment_name(5)]);
    assert_eq!(wal.bytes_on_disk(), total_size(dir.path()));
    assert_eq!(wal.append(batch(5, 3)).await.unwrap(), 6);
    wal.close().await.unwrap();

    let (wal, replayed) = Wal::open(tiny()).unwrap();
    assert_eq!(
        replayed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![5, 6]
    );
    assert_eq!(replayed[0].spans, *batch(4, 3));
    assert_eq!(wal.append(batch(6, 1)).await.unwrap(), 7);
}

#[tokio::test]
async fn full_queue_is_reported_as_overload() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, gate_rx) = std::sync::mpsc::channel();
    // The writer is held at the gate, as if stuck on a slow disk; the queue holds one append.
    let (wal, _) = Wal::open_inner(
        WalConfig {
            queue_depth: 1,
            ..cfg(dir.path())
        },
        Some(gate_rx),
        None,
    )
    .unwrap();
    let first = wal.append(batch(0, 1));
    tokio::pin!(first);
    assert!(futures::poll!(&mut first).is_pending());

    let err = wal.append(batch(1, 1)).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_millis(250)));
    assert!(matches!(err, Error::Overloaded { .. }));
    assert_eq!(wal.stats().overloaded, 1);

    gate.send(()).unwrap();
    assert_eq!(first.await.unwrap(), 1);
    assert_eq!(wal.append(batch(2, 1)).await.unwrap(), 2);
    wal.shutdown().await.unwrap();
    let err = wal.append(batch(3, 1)).await.unwrap_err();
    assert!(matches!(err, Error::Wal(_)), "{err}");
    let (_, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(
        replayed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[tokio::test]
async fn shutdown_writes_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, gate_rx) = std::sync::mpsc::channel();
    let (wal, _) = Wal::open_inner(cfg(dir.path()), Some(gate_rx), None).unwrap();
    let mut waiting = Vec::new();
    for tag in 0..5 {
        let wal = wal.clone();
        waiting.push(tokio::spawn(async move { wal.append(batch(tag, 2)).await }));
    }
    while wal.tx.capacity() > 1024 - 5 {
        tokio::task::yield_now().await;
    }
    let closer = {
        let wal = wal.clone();
        tokio::spawn(async move { wal.close().await })
    };
    // The shutdown request is queued behind the five appends before the writer may start.
    while wal.tx.capacity() > 1024 - 6 {
        tokio::task::yield_now().await;
    }
    gate.send(()).unwrap();
    closer.await.unwrap().unwrap();
    let mut seqs: Vec<u64> = Vec::new();
    for w in waiting {
        seqs.push(w.await.unwrap().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    wal.shutdown().await.unwrap();
    let (_, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(replayed.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_increasing_seqs() {
    const TASKS: u64 = 64;
    const EACH: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig {
        segment_bytes: 64 << 10,
        ..cfg(dir.path())
    })
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                seqs.push(wal.append(batch(t * EACH + i, 2)).await.unwrap());
            }
            seqs
        }));
    }
    let mut by_seq = std::collections::HashMap::new();
    for (t, task) in tasks.into_iter().enumerate() {
        let seqs = task.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "task {t}: {seqs:?}");
        for (i, seq) in seqs.into_iter().enumerate() {
            assert!(
                by_seq.insert(seq, t as u64 * EACH + i as u64).is_none(),
                "seq {seq} twice"
            );
        }
    }
    let n = TASKS * EACH;
    assert_eq!(wal.last_seq(), n);
    let stats = wal.stats();
    assert!(stats.group_commits < n, "no grouping: {stats:?}");
    assert!(stats.segments_created > 0);
    wal.close().await.unwrap();

    let (_, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert_eq!(replayed.len() as u64, n);
    for (i, r) in replayed.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.spans, *batch(by_seq[&r.seq], 2));
    }
}

/// The child half of `acked_appends_survive_kill_9`: appends forever from eight tasks and
/// prints `ack <seq> <tag>` for each acknowledged record. Does nothing unless started by it.
#[test]
#[ignore]
fn crash_child() {
    let Some(dir) = std::env::var_os("WAL_CRASH_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    rt.unwrap().block_on(async {
        let cfg = WalConfig {
            segment_bytes: 64 << 10,
            ..WalConfig::new(dir)
        };
        let (wal, _) = Wal::open(cfg).unwrap();
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let tag = t * 1_000_000 + i;
                        let seq = wal.append(batch(tag, 4)).await.unwrap();
                        println!("ack {seq} {tag}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acked_appends_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let name = module_path!().split_once("::").unwrap().1.to_string() + "::crash_child";
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            name.as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WAL_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ack ") {
            let (seq, tag) = rest.split_once(' ').unwrap();
            acked.push((seq.parse::<u64>().unwrap(), tag.parse::<u64>().unwrap()));
            if acked.len() == 3000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert_eq!(acked.len(), 3000, "child stopped early");

    let (_, replayed) = Wal::open(cfg(dir.path())).unwrap();
    assert!(replayed.len() >= acked.len());
    let by_seq: std::collections::HashMap<u64, &Replayed> =
        replayed.iter().map(|r| (r.seq, r)).collect();
    for (seq, tag) in acked {
        let r = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("acked seq {seq} lost"));
        assert_eq!(r.spans, *batch(tag, 4), "seq {seq}");
    }
    assert!(replayed
        .iter()
        .enumerate()
        .all(|(i, r)| r.seq == i as u64 + 1));
    assert!(
        segment_files(dir.path()).len() > 1,
        "no segment roll exercised"
    );
}

/// Rough throughput with `FsyncPolicy::Always` on the disk of `WAL_BENCH_DIR` (default: the
/// system temp directory); `WAL_BENCH_SPANS` spans per append (50), `WAL_BENCH_TASKS`
/// concurrent tasks (256), `WAL_BENCH_BATCHES` appends per task (200). Run with `cargo test -p meshtrace-collector --release -- --ignored
/// wal_throughput --nocapture`.
#[test]
#[ignore]
fn wal_throughput() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let rt = rt.unwrap();
    let base = std::env::var_os("WAL_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let spans_per_batch = env("WAL_BENCH_SPANS", 50) as usize;
    let (tasks, batches) = (env("WAL_BENCH_TASKS", 256), env("WAL_BENCH_BATCHES", 200));
    let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
    let shared = batch(0, spans_per_batch);
    let started = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (wal, spans) = (wal.clone(), shared.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..batches {
                    wal.append(spans.clone()).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let stats = wal.stats();
    let spans = stats.spans as f64;
    println!(
        "wal: {:.0} spans/s, {:.0} records/s, {:.1} MB/s, {} group commits ({:.1} records each), {} fsyncs",
        spans / secs,
        stats.records as f64 / secs,
        stats.bytes_written as f64 / secs / 1e6,
        stats.group_commits,
        stats.records as f64 / stats.group_commits as f64,
        stats.fsyncs
    );
    assert_eq!(stats.records, tasks * batches);
}

#[tokio::test]
async fn segments_are_preallocated_without_growing_their_length() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        segment_bytes: 1 << 20,
        ..cfg(dir.path())
    };
    let (wal, _) = Wal::open(config).unwrap();
    wal.append(batch(1, 10)).await.unwrap();
    let name = segment_files(dir.path()).pop().unwrap();
    let meta = fs::metadata(dir.path().join(name)).unwrap();
    // The length is what was written (readers see records only); the blocks are reserved.
    assert_eq!(meta.len(), wal.bytes_on_disk());
    assert!(meta.len() < 1 << 20);
    assert!(meta.blocks() * 512 >= 1 << 20, "{} blocks", meta.blocks());
    assert_eq!(wal.unavailable(), None);
    wal.close().await.unwrap();
}
