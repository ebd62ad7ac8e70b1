//! RED metrics of services (request rate, error rate, latency quantiles) over time, as Jaeger's
//! Service Performance Monitoring serves them (`/api/metrics/*`), computed from the per-minute
//! rollups the store commits with every span segment ([`meshtrace_storage::rollup`]): a
//! request reads the rollup rows of its time range, never the spans.
//!
//! Points follow Prometheus range-query semantics, which Jaeger's own metrics backend uses:
//! one point every `step` from `end - lookback` to `end`, each computed over the `ratePer`
//! before its time `t`. With minute resolution, that window is the whole minutes that ended by
//! `t` (`ratePer` rounded up to whole minutes, the minute in progress not counted), so a
//! steady rate is answered exactly. The call rate is calls per second over the window, the
//! error rate errors over calls, a latency the quantile of span durations in milliseconds. A
//! window without calls has no point. Steps and windows shorter than a minute are raised to one ([`MIN_STEP_NS`]), and
//! the step so that a series has at most [`MAX_POINTS`] points.

use std::collections::BTreeMap;
use std::ops::Bound;

use meshtrace_model::time::rfc3339;
use meshtrace_model::SpanKind;
use meshtrace_storage::rollup::{minute_of, Rollup, RollupFilter, ROLLUP_STEP_NS};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::QueryError;
use crate::Queries;

/// The smallest step (and rate window) the rollups resolve: one minute.
pub const MIN_STEP_NS: i64 = ROLLUP_STEP_NS;
/// Most points one series has: a longer lookback raises the step (Prometheus refuses such a
/// range query; a dashboard zoomed out still gets an answer).
pub const MAX_POINTS: i64 = 11_000;
/// Most services one request may name.
pub const MAX_SERVICES: usize = 100;

/// Which RED metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RedMetric {
    /// The `quantile` (0 < q <= 1) of span durations, in ms.
    Latencies { quantile: f64 },
    /// Calls per second.
    Calls,
    /// Errors over calls.
    Errors,
}

/// A RED metrics query (Jaeger's `BaseQueryParameters`).
#[derive(Clone, Debug, PartialEq)]
pub struct RedQuery {
    pub services: Vec<String>,
    /// Span kinds counted (Jaeger's default: server).
    pub kinds: Vec<SpanKind>,
    /// One series per operation instead of one per service.
    pub group_by_operation: bool,
    pub end_ns: i64,
    pub lookback_ns: i64,
    pub step_ns: i64,
    /// The window each point is computed over.
    pub rate_per_ns: i64,
}

/// Jaeger's `MetricFamily`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct MetricFamily {
    /// `service_latencies`, `service_operation_call_rate`, ...
    pub name: String,
    /// Always `GAUGE`.
    #[serde(rename = "type")]
    pub kind: String,
    pub help: String,
    pub metrics: Vec<Metric>,
}

/// One series.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// `service_name`, and `operation` when grouped by operation.
    pub labels: Vec<Label>,
    pub metric_points: Vec<MetricPoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Label {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    pub gauge_value: GaugeValue,
    /// RFC 3339.
    pub timestamp: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GaugeValue {
    pub double_value: f64,
}

impl RedMetric {
    fn name_and_help(self, by_operation: bool) -> (String, String) {
        let (name, help) = match self {
            RedMetric::Latencies { quantile } => (
                "latencies",
                format!("{quantile:.2}th quantile latency, grouped by service"),
            ),
            RedMetric::Calls => ("call_rate", "calls/sec, grouped by service".to_string()),
            RedMetric::Errors => (
                "error_rate",
                "error rate, computed as a fraction of errors/sec over calls/sec, grouped by \
                 service"
                    .to_string(),
            ),
        };
        match by_operation {
            true => (format!("service_operation_{name}"), help + " & operation"),
            false => (format!("service_{name}"), help),
        }
    }

    /// The value of one window, `None` when it has no calls.
    fn value(self, window: &Rollup, rate_per_ns: i64) -> Option<f64> {
        if window.calls == 0 {
            return None;
        }
        Some(match self {
            RedMetric::Latencies { quantile } => window.durations.quantile(quantile)? / 1e6,
            RedMetric::Calls => window.calls as f64 / (rate_per_ns as f64 / 1e9),
            RedMetric::Errors => window.errors as f64 / window.calls as f64,
        })
    }
}

impl RedQuery {
    /// Checks the query and raises the step and window to the minimum.
    fn normalized(&self, metric: RedMetric) -> Result<RedQuery, QueryError> {
        let invalid = |m: String| Err(QueryError::InvalidArgument(m));
        if self.services.is_empty() {
            return invalid("please provide at least one service name".into());
        }
        if self.services.len() > MAX_SERVICES {
            return invalid(format!("at most {MAX_SERVICES} services"));
        }
        if let RedMetric::Latencies { quantile } = metric {
            if !(quantile > 0.0 && quantile <= 1.0) {
                return invalid(format!("quantile must be in (0, 1], got {quantile}"));
            }
        }
        if self.lookback_ns <= 0 || self.step_ns <= 0 || self.rate_per_ns <= 0 {
            return invalid("lookback, step and ratePer must be positive".into());
        }
        let mut q = self.clone();
        q.step_ns = q
            .step_ns
            .max(MIN_STEP_NS)
            .max(q.lookback_ns / (MAX_POINTS - 1) + 1);
        q.rate_per_ns = q.rate_per_ns.max(MIN_STEP_NS);
        Ok(q)
    }
}

/// A series' rollups by minute.
type Minutes = BTreeMap<i64, Rollup>;

impl Queries {
    /// One RED metric for the services of `query`, a series per service (or per service and
    /// operation), sorted by labels.
    pub async fn red_metrics(
        &self,
        metric: RedMetric,
        query: &RedQuery,
    ) -> Result<MetricFamily, QueryError> {
        let q = query.normalized(metric)?;
        let start = q.end_ns.saturating_sub(q.lookback_ns);
        let filter = RollupFilter {
            services: q.services.clone(),
            kinds: q.kinds.clone(),
            from_ns: minute_of(start.saturating_sub(q.rate_per_ns)),
            to_ns: q.end_ns,
        };
        let mut series: BTreeMap<(String, Option<String>), Minutes> = BTreeMap::new();
        for (key, rollup) in self.store.span_rollups(&filter).await? {
            let op = q.group_by_operation.then_some(key.operation);
            let minutes = series.entry((key.service, op)).or_default();
            minutes.entry(key.minute_ns).or_default().merge(&rollup);
        }
        let (name, help) = metric.name_and_help(q.group_by_operation);
        let metrics = series
            .into_iter()
            .map(|((service, op), minutes)| Metric {
                labels: labels(service, op),
                metric_points: points(metric, &q, start, &minutes),
            })
            .filter(|m| !m.metric_points.is_empty())
            .collect();
        Ok(MetricFamily {
            name,
            kind: "GAUGE".into(),
            help,
            metrics,
        })
    }
}

fn labels(service: String, operation: Option<String>) -> Vec<Label> {
    let mut out = vec![Label {
        name: "service_name".into(),
        value: service,
    }];
    out.extend(operation.map(|value| Label {
        name: "operation".into(),
        value,
    }));
    out
}

/// The points of one series: one per step with calls in its window.
fn points(metric: RedMetric, q: &RedQuery, start: i64, minutes: &Minutes) -> Vec<MetricPoint> {
    let mut out = Vec::new();
    let mut t = start;
    // The window in whole minutes: ratePer rounded up to a minute.
    let whole = q.rate_per_ns / MIN_STEP_NS + i64::from(q.rate_per_ns % MIN_STEP_NS != 0);
    let width = whole.saturating_mul(MIN_STEP_NS);
    while t <= q.end_ns {
        // The whole minutes that ended by t: [minute(t) - width, minute(t)).
        let to = minute_of(t);
        let mut window = Rollup::default();
        let range = (
            Bound::Included(to.saturating_sub(width)),
            Bound::Excluded(to),
        );
        for (_, r) in minutes.range(range) {
            window.merge(r);
        }
        if let Some(v) = metric.value(&window, width) {
            out.push(MetricPoint {
                gauge_value: GaugeValue { double_value: v },
                timestamp: rfc3339(t),
            });
        }
        t = t.saturating_add(q.step_ns);
        if t == i64::MAX {
            break;
        }
    }
    out
}
