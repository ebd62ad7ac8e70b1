//! Read-only SQL over the spans (DataFusion): the `spans` table is the union of the committed
//! Parquet segments (a `ListingTable` over the catalog's files, read through the store's
//! object store) and the in-memory buffer (a `MemTable`), rebuilt for every query from one
//! snapshot so no span is missing or doubled. More tables can be added with
//! [`Store::register_table`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::TryStreamExt;
use meshtrace_model::schema::spans_schema;

use crate::buffer::Snapshot;
use crate::error::StorageError;
use crate::store::{lock, Store, STORE_URL};

/// The `spans` table: segments and buffer of one snapshot.
#[derive(Debug)]
struct SpansTable {
    schema: SchemaRef,
    segments: Option<ListingTable>,
    buffer: MemTable,
}

impl SpansTable {
    fn new(ctx: &SessionContext, snap: &Snapshot) -> Result<SpansTable, DataFusionError> {
        let schema = spans_schema();
        let segments = if snap.segments.is_empty() {
            None
        } else {
            let urls = snap
                .segments
                .iter()
                .map(|s| ListingTableUrl::parse(format!("{STORE_URL}{}", s.path)))
                .collect::<Result<Vec<_>, _>>()?;
            let format =
                ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
            let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(schema.clone());
            Some(ListingTable::try_new(config)?)
        };
        let buffer = MemTable::try_new(schema.clone(), vec![snap.batches.clone()])?;
        Ok(SpansTable {
            schema,
            segments,
            buffer,
        })
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // The Parquet side prunes with the filters; DataFusion still applies them above.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let mut inputs = vec![self.buffer.scan(state, projection, filters, limit).await?];
        if let Some(segments) = &self.segments {
            inputs.push(segments.scan(state, projection, filters, limit).await?);
        }
        UnionExec::try_new(inputs)
    }
}

/// Accepts exactly one query (or EXPLAIN); anything else is an invalid argument naming it.
fn check_read_only(sql: &str) -> Result<(), StorageError> {
    let statements = DFParser::parse_sql(sql)
        .map_err(|e| StorageError::InvalidArgument(format!("sql does not parse: {e}")))?;
    if statements.len() != 1 {
        return Err(StorageError::InvalidArgument(format!(
            "expected exactly one statement, got {}",
            statements.len()
        )));
    }
    let refuse = |what: String| {
        StorageError::InvalidArgument(format!(
            "only read-only queries are allowed, not {what} statements"
        ))
    };
    match &statements[0] {
        DfStatement::Statement(s) => match s.as_ref() {
            SqlStatement::Query(_) | SqlStatement::Explain { .. } => Ok(()),
            other => {
                let text = other.to_string();
                let verb = text.split_whitespace().next().unwrap_or("unknown");
                Err(refuse(verb.to_ascii_uppercase()))
            }
        },
        DfStatement::Explain(_) => Ok(()),
        DfStatement::CreateExternalTable(_) => Err(refuse("CREATE EXTERNAL TABLE".into())),
        DfStatement::CopyTo(_) => Err(refuse("COPY".into())),
        DfStatement::Reset(_) => Err(refuse("RESET".into())),
    }
}

/// A DataFusion error as the store reports it: mistakes in the user's SQL and plans past
/// the memory limits are invalid arguments (the message says which), the rest the engine's.
fn classify(e: DataFusionError) -> StorageError {
    match e.find_root() {
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => StorageError::InvalidArgument(e.to_string()),
        DataFusionError::ResourcesExhausted(why) => StorageError::InvalidArgument(format!(
            "the query needs more memory than it may use: {why}"
        )),
        _ => e.into(),
    }
}

/// What a plan's task sends back: its batches, then an error if it failed.
type PlanSender = tokio::sync::mpsc::Sender<Result<RecordBatch, StorageError>>;

impl Store {
    /// A DataFusion session with the `spans` table (segments and buffer as of now) and the
    /// registered extra tables. Strings stay `Utf8` (no view types); partitions follow the
    /// query runtime's threads; size-chosen functions are bounded ([`crate::bounded`]).
    pub async fn session(&self) -> Result<SessionContext, StorageError> {
        let limits = &self.inner.sql_runtime.limits;
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(limits.threads.max(1));
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let ctx = SessionContext::new_with_config_rt(config, self.inner.runtime.clone());
        crate::bounded::register(&ctx, limits.function_output_bytes())?;
        crate::bounded_ops::register(&ctx, limits.function_output_bytes());
        let table = SpansTable::new(&ctx, &self.snapshot())?;
        ctx.register_table("spans", Arc::new(table))?;
        let extra = lock(&self.inner.tables).clone();
        for (name, provider) in extra {
            ctx.register_table(name.as_str(), provider)?;
        }
        Ok(ctx)
    }

    /// Runs one read-only query; at most `max_rows` rows are returned, and it fails with
    /// [`StorageError::Timeout`] past `timeout`.
    pub async fn sql(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        self.sql_with_params(sql, Vec::new(), max_rows, timeout)
            .await
    }

    /// [`Store::sql`] with values bound to the placeholders `$1`, `$2`, ...: the way to put
    /// request values into a query without building SQL text from them.
    pub async fn sql_with_params(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        let mut out = Vec::new();
        let mut rows = 0;
        self.sql_each(sql, params, timeout, |batch| {
            let take = batch.num_rows().min(max_rows - rows);
            rows += take;
            out.push(batch.slice(0, take));
            Ok::<_, StorageError>(rows < max_rows)
        })
        .await?;
        Ok(out)
    }

    /// Runs one read-only query with values bound to its placeholders and hands each result
    /// batch to `each` as the engine produces it, until `each` answers `false` or the result
    /// ends: for callers that fold a large result into something small (the query layer's
    /// aggregations) instead of holding it. The plan runs on the query runtime under its
    /// limits ([`crate::sql_runtime`]); past `timeout` it is cancelled and this fails with
    /// [`StorageError::Timeout`].
    pub async fn sql_each<E: From<StorageError>>(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        timeout: Duration,
        mut each: impl FnMut(RecordBatch) -> Result<bool, E>,
    ) -> Result<(), E> {
        check_read_only(sql)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = self.inner.sql_runtime.slot(deadline).await?;
        let ctx = self.session().await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let sql = sql.to_owned();
        let mut task = self.inner.sql_runtime.spawn(|cancelled| async move {
            let _slot = slot;
            if let Err(e) = run_plan(ctx, &sql, params, &cancelled, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Err(StorageError::Timeout(timeout).into()),
                Ok(Some(Ok(batch))) => {
                    if !each(batch)? {
                        return Ok(());
                    }
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => break,
            }
        }
        // The channel closed: the plan ended, or its task panicked.
        (&mut task.task).await.map_err(StorageError::from)?;
        Ok(())
    }
}

/// Plans and runs one query on the query runtime, sending its batches until the receiver
/// goes away.
async fn run_plan(
    ctx: SessionContext,
    sql: &str,
    params: Vec<ScalarValue>,
    cancelled: &Arc<AtomicBool>,
    tx: &PlanSender,
) -> Result<(), StorageError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await.map_err(classify)?;
    let df = match params.is_empty() {
        true => df,
        false => df.with_param_values(params).map_err(classify)?,
    };
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await.map_err(classify)?;
    let plan = crate::cancel::cancellable(plan, cancelled).map_err(classify)?;
    let mut stream = execute_stream(plan, task).map_err(classify)?;
    while let Some(batch) = stream.try_next().await.map_err(classify)? {
        if tx.send(Ok(batch)).await.is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queries_pass_the_read_only_check() {
        assert!(check_read_only("SELECT count(*) FROM spans").is_ok());
        assert!(check_read_only("EXPLAIN SELECT 1").is_ok());
        for (sql, verb) in [
            ("CREATE TABLE t (a INT)", "CREATE"),
            ("INSERT INTO spans (name) VALUES ('x')", "INSERT"),
            ("DROP TABLE spans", "DROP"),
            ("COPY spans TO '/tmp/x.parquet'", "COPY"),
        ] {
            let err = check_read_only(sql).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::InvalidArgument, "{sql}");
            assert!(err.to_string().contains(verb), "{sql}: {err}");
        }
        let two = check_read_only("SELECT 1; SELECT 2").unwrap_err();
        assert!(two.to_string().contains("exactly one statement"), "{two}");
    }
}
