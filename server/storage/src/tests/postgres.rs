//! The PostgreSQL catalog, for real, against the local server (trust auth). Each test run uses
//! a fresh schema (through the `search_path` connection option) and drops it at the end.

use sqlx::Connection;

use super::gen::mesh_traffic;
use super::{config, normalized_all, now_ns};
use crate::{Store, StoreConfig, TraceQuery};

pub(super) const SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

pub(super) async fn fresh_schema() -> String {
    let nanos = now_ns();
    let schema = format!("meshtrace_test_{}_{nanos}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(SERVER)
        .await
        .expect("postgres at 127.0.0.1:5432");
    // Identifiers cannot be bound; this one is built from numbers only.
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    schema
}

pub(super) async fn drop_schema(schema: &str) {
    let mut conn = sqlx::PgConnection::connect(SERVER).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}

fn pg_config(dir: &std::path::Path, schema: &str) -> StoreConfig {
    StoreConfig {
        catalog_url: Some(format!("{SERVER}?options=-csearch_path%3D{schema}")),
        ..config(dir)
    }
}

#[tokio::test]
async fn postgres_catalog_round_trip() {
    let schema = fresh_schema().await;
    let dir = tempfile::tempdir().unwrap();
    let spans = mesh_traffic(8, 400, now_ns(), 1_000_000);
    {
        let store = Store::open(pg_config(dir.path(), &schema)).await.unwrap();
        store.append(10, &spans[..200]).unwrap();
        assert_eq!(store.flush().await.unwrap(), Some(10));
        store.append(11, &spans[200..]).unwrap();
        assert_eq!(store.flush().await.unwrap(), Some(11));
        store.close().await;
    }
    assert!(
        !dir.path().join("catalog.db").exists(),
        "no sqlite catalog when postgres is set"
    );
    let store = Store::open(pg_config(dir.path(), &schema)).await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 11);
    assert_eq!(store.segments().len(), 2);
    let services = store.services().await.unwrap();
    assert!(services.contains(&"ratings".to_string()), "{services:?}");
    let id = spans[250].trace_id;
    let want: Vec<_> = spans.iter().filter(|s| s.trace_id == id).cloned().collect();
    assert_eq!(
        normalized_all(store.trace(id).await.unwrap()),
        normalized_all(want)
    );
    let found = store
        .find_traces(&TraceQuery {
            service: Some("details".into()),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    // The rows really are in PostgreSQL, in the test's schema.
    let mut conn = sqlx::PgConnection::connect(SERVER).await.unwrap();
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.segments"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2);
    store.close().await;
    drop_schema(&schema).await;
}
