//! Jaeger search semantics of `find_traces`, from the buffer, from segments and from both.

use meshtrace_model::{AttrValue, Event, KeyValue, Link, Span};

use super::gen::span;
use super::{now_ns, open, rows};
use crate::{Store, TraceQuery};

const MS: i64 = 1_000_000;

fn fixture(t0: i64) -> (Vec<Span>, Vec<Span>) {
    let mut t1_child = span(1, 2, "back", "query", t0 + 10 * MS, 5 * MS);
    t1_child.resource_attributes = vec![KeyValue::string("k8s.namespace", "prod")];
    t1_child.events = vec![Event {
        time_unix_nano: t0 + 12 * MS,
        name: "retry".into(),
        attributes: vec![KeyValue::string("retry.reason", "timeout")],
    }];
    let mut t2 = span(2, 1, "front", "GET /b", t0 + 1000 * MS, 10 * MS);
    t2.attributes = vec![KeyValue::new("http.status_code", AttrValue::Int(503))];
    let mut t4 = span(4, 1, "other", "x", t0 + 3000 * MS, MS);
    t4.links = vec![Link {
        trace_id: [1; 16],
        span_id: [1; 8],
        trace_state: String::new(),
        attributes: vec![KeyValue::new("link.kind", AttrValue::Str("follows".into()))],
    }];
    let first = vec![span(1, 1, "front", "GET /a", t0, 100 * MS), t1_child, t2];
    let second = vec![
        span(3, 1, "front", "GET /a", t0 + 2000 * MS, MS),
        span(3, 2, "back", "cache", t0 - 3_600_000 * MS, MS),
        t4,
    ];
    (first, second)
}

async fn ids(store: &Store, q: TraceQuery) -> Vec<u8> {
    let traces = store.find_traces(&q).await.unwrap();
    for t in &traces {
        assert!(t.windows(2).all(|w| w[0].trace_id == w[1].trace_id));
        assert!(t
            .windows(2)
            .all(|w| w[0].start_unix_nano <= w[1].start_unix_nano));
    }
    traces.iter().map(|t| t[0].trace_id[0]).collect()
}

fn q(service: Option<&str>) -> TraceQuery {
    TraceQuery {
        service: service.map(str::to_string),
        limit: 20,
        ..Default::default()
    }
}

fn tag(k: &str, v: &str) -> Vec<(String, String)> {
    vec![(k.to_string(), v.to_string())]
}

async fn check_semantics(store: &Store, t0: i64) {
    assert_eq!(
        ids(store, q(Some("front"))).await,
        vec![3, 2, 1],
        "most recent first"
    );
    assert_eq!(ids(store, q(None)).await, vec![4, 3, 2, 1]);
    let op = TraceQuery {
        operation: Some("GET /a".into()),
        ..q(Some("front"))
    };
    assert_eq!(ids(store, op).await, vec![3, 1]);
    assert_eq!(ids(store, q(Some("nobody"))).await, Vec::<u8>::new());

    let resource = TraceQuery {
        tags: tag("k8s.namespace", "prod"),
        ..q(None)
    };
    let whole = store.find_traces(&resource).await.unwrap();
    assert_eq!(whole.len(), 1);
    assert_eq!(
        whole[0].len(),
        2,
        "the whole trace, not only the matching span"
    );

    let event = TraceQuery {
        tags: tag("retry.reason", "timeout"),
        ..q(Some("back"))
    };
    assert_eq!(ids(store, event).await, vec![1]);
    let event_other_span = TraceQuery {
        tags: tag("retry.reason", "timeout"),
        ..q(Some("front"))
    };
    assert_eq!(
        ids(store, event_other_span).await,
        Vec::<u8>::new(),
        "one span must match all"
    );
    let int_tag = TraceQuery {
        tags: tag("http.status_code", "503"),
        ..q(None)
    };
    assert_eq!(ids(store, int_tag).await, vec![2]);
    let link = TraceQuery {
        tags: tag("link.kind", "follows"),
        ..q(None)
    };
    assert_eq!(ids(store, link).await, vec![4]);
    let both = TraceQuery {
        tags: vec![
            ("k8s.namespace".into(), "prod".into()),
            ("retry.reason".into(), "timeout".into()),
        ],
        ..q(None)
    };
    assert_eq!(ids(store, both).await, vec![1]);
    let wrong_value = TraceQuery {
        tags: tag("http.status_code", "500"),
        ..q(None)
    };
    assert_eq!(ids(store, wrong_value).await, Vec::<u8>::new());

    let long = TraceQuery {
        duration_min_ns: Some(50 * MS),
        ..q(Some("front"))
    };
    assert_eq!(ids(store, long).await, vec![1]);
    let short = TraceQuery {
        duration_max_ns: Some(2 * MS),
        duration_min_ns: Some(0),
        ..q(Some("front"))
    };
    assert_eq!(ids(store, short).await, vec![3]);
    let limited = TraceQuery {
        limit: 2,
        ..q(Some("front"))
    };
    assert_eq!(ids(store, limited).await, vec![3, 2]);

    let window = TraceQuery {
        start_min_ns: Some(t0 + 500 * MS),
        start_max_ns: Some(t0 + 5000 * MS),
        ..q(Some("front"))
    };
    let traces = store.find_traces(&window).await.unwrap();
    let got: Vec<u8> = traces.iter().map(|t| t[0].trace_id[0]).collect();
    assert_eq!(got, vec![3, 2]);
    assert_eq!(
        traces[0].len(),
        2,
        "span outside the window still belongs to the trace"
    );
    assert_eq!(traces[0][0].start_unix_nano, t0 - 3_600_000 * MS);
    let cache_old = TraceQuery {
        operation: Some("cache".into()),
        ..window
    };
    assert_eq!(
        ids(
            store,
            TraceQuery {
                service: Some("back".into()),
                ..cache_old
            }
        )
        .await,
        Vec::<u8>::new()
    );
}

/// Events and links are nested columns SQL can reach into, in Parquet and in the buffer.
async fn check_nested_sql(store: &Store) {
    let events = "SELECT name, events[1]['name'] AS event, \
                  events[1]['attributes']['retry.reason'] AS reason \
                  FROM spans WHERE events IS NOT NULL";
    assert_eq!(
        rows(store, events).await,
        vec!["| query | retry | timeout |"]
    );
    let links = "SELECT name, array_length(links) AS n, l['attributes']['link.kind'] AS kind \
                 FROM (SELECT name, links, unnest(links) AS l FROM spans)";
    assert_eq!(rows(store, links).await, vec!["| x | 1 | follows |"]);
}

#[tokio::test]
async fn find_traces_follows_jaeger_semantics_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    let (first, second) = fixture(t0);
    let store = open(dir.path()).await;
    store.append(1, &first).unwrap();
    store.append(2, &second).unwrap();
    check_semantics(&store, t0).await; // all buffered
    store.close().await;
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.append(1, &first).unwrap();
    store.flush().await.unwrap();
    store.append(2, &second).unwrap();
    check_semantics(&store, t0).await; // segment + buffer
    check_nested_sql(&store).await;
    store.flush().await.unwrap();
    check_semantics(&store, t0).await; // two segments
    check_nested_sql(&store).await;
    let before = store.stats();
    assert_eq!(ids(&store, q(Some("other"))).await, vec![4]);
    let late = TraceQuery {
        start_min_ns: Some(t0 + 2500 * MS),
        ..q(None)
    };
    assert_eq!(ids(&store, late).await, vec![4]);
    let after = store.stats();
    // "other" is only in the second segment; the first ends before t0 + 2.5 s.
    assert_eq!(
        after.search_segments_skipped - before.search_segments_skipped,
        2
    );
    assert_eq!(
        after.search_segments_scanned - before.search_segments_scanned,
        2
    );
    drop(store);
    let store = open(dir.path()).await;
    check_semantics(&store, t0).await; // after reopen
}

/// Ten segments in time order, and one early segment that also holds the latest span of a
/// trace stored later: a search with a small limit reads the segments holding the newest
/// matches, stops, and answers as a search reading everything would.
#[tokio::test]
async fn search_reads_newest_segments_first_and_stops_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - 3_600_000 * MS;
    let store = open(dir.path()).await;
    for seg in 0..10u8 {
        let mut spans: Vec<Span> = (0..5u8)
            .map(|j| {
                let start = t0 + (i64::from(seg) * 10 + i64::from(j)) * 1000 * MS;
                span(10 * seg + j + 1, 1, "front", "GET /a", start, MS)
            })
            .collect();
        if seg == 0 {
            // Trace 95 (stored in the last segment) ends with a span flushed first.
            spans.push(span(95, 2, "front", "GET /late", t0 + 200_000 * MS, MS));
        }
        store.append(u64::from(seg) + 1, &spans).unwrap();
        store.flush().await.unwrap();
    }
    let everything = ids(
        &store,
        TraceQuery {
            limit: 1000,
            ..q(Some("front"))
        },
    )
    .await;
    assert_eq!(everything.len(), 50);
    assert_eq!(&everything[..4], &[95, 94, 93, 92]);

    let before = store.stats();
    let newest = ids(
        &store,
        TraceQuery {
            limit: 3,
            ..q(Some("front"))
        },
    )
    .await;
    let after = store.stats();
    assert_eq!(newest, everything[..3]);
    // The segment with trace 95's late span, then the next two newest together (reads go in
    // waves of 1, 2, 4, 8 segments); the other seven are left.
    let scanned = after.search_segments_scanned - before.search_segments_scanned;
    let skipped = after.search_segments_skipped - before.search_segments_skipped;
    assert_eq!((scanned, skipped), (3, 7));

    // A condition only old traces meet still finds them, past the newest segments.
    let tagged = TraceQuery {
        operation: Some("GET /a".into()),
        start_max_ns: Some(t0 + 25_000 * MS),
        limit: 2,
        ..q(Some("front"))
    };
    assert_eq!(ids(&store, tagged).await, vec![25, 24]);
}
