//! Functions whose output size a query chooses with a number (`repeat('x', 2000000000)`,
//! `range(1, 1e10)`), bounded: DataFusion's memory pool accounts for what operators hold
//! (sorts, joins, aggregates), not for the values a scalar function builds, so one such call
//! could allocate gigabytes before any limit saw it. Each session registers these wrappers in
//! place of the built-in functions; a wrapper estimates, from its arguments, how many bytes one
//! call (one batch) would build and refuses past the limit with `ResourcesExhausted`, before
//! allocating anything. Everything else is the built-in function's.

use arrow::compute::cast;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::Array;
use arrow_schema::{DataType, FieldRef, TimeUnit};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a bounded function's output size follows from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Shape {
    /// `repeat(text, n)`: the text's bytes times n.
    Repeat,
    /// `lpad(text, n[, fill])`, `rpad`: n characters of up to 4 bytes.
    Pad,
    /// `array_repeat(element, n)`: n elements.
    ArrayRepeat,
    /// `array_resize(array, n[, value])`: n elements.
    ArrayResize,
    /// `range([start,] stop[, step])`, `generate_series`: (stop - start) / step elements.
    Series,
    /// `replace(text, from, to)`: every occurrence of `from` becomes `to` (an empty `from`
    /// matches between every two characters).
    Replace,
    /// `regexp_replace(text, pattern, to[, flags])`: as `replace` with a pattern that could
    /// match between every two characters (the pattern's length says nothing).
    RegexpReplace,
    /// `concat(...)`, `concat_ws(...)`, `array_concat(...)`: the size of all the arguments
    /// (a constant counts once per row). Linear in its inputs, but nesting many calls over
    /// bounded values would multiply them.
    Sum,
}

const BOUNDED: [(&str, Shape); 12] = [
    ("repeat", Shape::Repeat),
    ("lpad", Shape::Pad),
    ("rpad", Shape::Pad),
    ("array_repeat", Shape::ArrayRepeat),
    ("array_resize", Shape::ArrayResize),
    ("range", Shape::Series),
    ("generate_series", Shape::Series),
    ("replace", Shape::Replace),
    ("regexp_replace", Shape::RegexpReplace),
    ("concat", Shape::Sum),
    ("concat_ws", Shape::Sum),
    ("array_concat", Shape::Sum),
];

/// The names of the functions bounded here.
pub(crate) const NAMES: [&str; BOUNDED.len()] = {
    let mut names = [""; BOUNDED.len()];
    let mut i = 0;
    while i < BOUNDED.len() {
        names[i] = BOUNDED[i].0;
        i += 1;
    }
    names
};

/// Replaces the size-chosen functions of `ctx` with wrappers that refuse to build more than
/// `limit` bytes in one call.
pub(crate) fn register(ctx: &SessionContext, limit: u64) -> Result<()> {
    for (name, shape) in BOUNDED {
        let Ok(inner) = ctx.udf(name) else { continue };
        let bounded = Bounded {
            inner: inner.as_ref().clone(),
            shape,
            limit,
        };
        ctx.register_udf(ScalarUDF::new_from_impl(bounded));
    }
    Ok(())
}

/// A built-in function with an output-size check in front.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    shape: Shape,
    limit: u64,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // `concat` folds its constant arguments here, without an invocation to check.
        if self.shape == Shape::Sum {
            let constant = args.iter().map(|a| match a {
                Expr::Literal(v, _) => v.size() as u64,
                _ => 0,
            });
            self.check(saturating_sum(constant))?;
        }
        self.inner.simplify(args, info)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(output_bytes(self.shape, &args.args, args.number_rows)?)?;
        self.inner.invoke_with_args(args)
    }
}

impl Bounded {
    /// Refuses a call that would build `bytes` bytes, past the limit.
    fn check(&self, bytes: u64) -> Result<()> {
        if bytes <= self.limit {
            return Ok(());
        }
        Err(DataFusionError::ResourcesExhausted(format!(
            "{}() would build {bytes} bytes, more than the {} bytes one function call may \
             build (a sixteenth of the query memory limit)",
            self.inner.name(),
            self.limit
        )))
    }
}

/// An upper estimate of the bytes one call builds.
fn output_bytes(shape: Shape, args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let rows = rows.max(1);
    let counts = |i: usize| ints(args.get(i), rows);
    let total =
        match shape {
            Shape::Repeat => {
                let lens = byte_lengths(args.first(), rows)?;
                let n = counts(1)?;
                saturating_sum(lens.iter().zip(&n).map(|(l, n)| l.saturating_mul(*n)))
            }
            Shape::Pad => saturating_sum(counts(1)?.iter().map(|n| n.saturating_mul(4))),
            Shape::ArrayRepeat => {
                let element = element_bytes(args.first());
                saturating_sum(counts(1)?.iter().map(|n| n.saturating_mul(element)))
            }
            Shape::ArrayResize => saturating_sum(counts(1)?.iter().map(|n| n.saturating_mul(8))),
            Shape::Series => saturating_sum(
                series_lengths(args, rows)?
                    .iter()
                    .map(|n| n.saturating_mul(8)),
            ),
            Shape::Replace => {
                let text = byte_lengths(args.first(), rows)?;
                let from = byte_lengths(args.get(1), rows)?;
                let to = byte_lengths(args.get(2), rows)?;
                let rows = text.iter().zip(&from).zip(&to);
                saturating_sum(rows.map(|((text, from), to)| {
                    let matches = text / from.max(&1) + 1;
                    text.saturating_add(matches.saturating_mul(*to))
                }))
            }
            Shape::RegexpReplace => {
                let text = byte_lengths(args.first(), rows)?;
                let to = byte_lengths(args.get(2), rows)?;
                saturating_sum(text.iter().zip(&to).map(|(text, to)| {
                    text.saturating_add(text.saturating_add(1).saturating_mul(*to))
                }))
            }
            Shape::Sum => sum_bytes(args, rows),
        };
    Ok(total)
}

/// The size of all the arguments of a call over `rows` rows (a constant counts once per row).
pub(crate) fn sum_bytes(args: &[ColumnarValue], rows: usize) -> u64 {
    let rows = rows.max(1) as u64;
    saturating_sum(args.iter().map(|a| match a {
        ColumnarValue::Scalar(s) => (s.size() as u64).saturating_mul(rows),
        ColumnarValue::Array(a) => a.get_array_memory_size() as u64,
    }))
}

fn saturating_sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}

/// Non-negative per-row integers of an argument (null and negative count as 0).
fn ints(arg: Option<&ColumnarValue>, rows: usize) -> Result<Vec<u64>> {
    Ok(signed(arg, rows)?
        .into_iter()
        .map(|v| v.unwrap_or(0).max(0) as u64)
        .collect())
}

/// Per-row values of an argument read as 64-bit integers (dates as days, timestamps in
/// their unit); `None` for nulls and values that do not convert.
fn signed(arg: Option<&ColumnarValue>, rows: usize) -> Result<Vec<Option<i64>>> {
    let Some(arg) = arg else {
        return Ok(vec![None; rows]);
    };
    match arg {
        ColumnarValue::Scalar(s) => {
            let v = s.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                ScalarValue::Int64(v) => v,
                _ => None,
            });
            Ok(vec![v; rows])
        }
        ColumnarValue::Array(a) => {
            let Ok(a) = cast(a, &DataType::Int64) else {
                return Ok(vec![None; a.len()]);
            };
            Ok(a.as_primitive::<Int64Type>().iter().collect())
        }
    }
}

/// Per-row byte lengths of a text argument.
fn byte_lengths(arg: Option<&ColumnarValue>, rows: usize) -> Result<Vec<u64>> {
    match arg {
        Some(ColumnarValue::Scalar(s)) => {
            let len = s.try_as_str().flatten().map_or(0, str::len) as u64;
            Ok(vec![len; rows])
        }
        Some(ColumnarValue::Array(a)) => {
            let a = cast(a, &DataType::LargeUtf8)?;
            Ok(a.as_string::<i64>()
                .iter()
                .map(|s| s.map_or(0, str::len) as u64)
                .collect())
        }
        None => Ok(vec![0; rows]),
    }
}

/// The average size of one element of an argument (at least 8 bytes).
fn element_bytes(arg: Option<&ColumnarValue>) -> u64 {
    let size = match arg {
        Some(ColumnarValue::Scalar(s)) => s.size(),
        Some(ColumnarValue::Array(a)) => a.get_array_memory_size() / a.len().max(1),
        None => 0,
    };
    (size as u64).max(8)
}

/// Per-row element counts of `range` / `generate_series`.
fn series_lengths(args: &[ColumnarValue], rows: usize) -> Result<Vec<u64>> {
    let (start, stop, step) = match args.len() {
        1 => (None, signed(args.first(), rows)?, None),
        2 => (
            Some(signed(args.first(), rows)?),
            signed(args.get(1), rows)?,
            None,
        ),
        _ => (
            Some(signed(args.first(), rows)?),
            signed(args.get(1), rows)?,
            Some(step_units(&args[2], args.first(), rows)?),
        ),
    };
    Ok((0..stop.len())
        .map(|i| {
            let from = start.as_ref().map_or(Some(0), |s| s[i]).unwrap_or(0);
            let to = stop[i].unwrap_or(0);
            let by = step
                .as_ref()
                .map_or(1, |s| s[i].unwrap_or(1))
                .unsigned_abs()
                .max(1);
            (to.abs_diff(from) / by).saturating_add(1)
        })
        .collect())
}

/// The step of a series in the unit of its start: an integer, or an interval in days (dates)
/// or in the timestamp's unit.
fn step_units(
    step: &ColumnarValue,
    start: Option<&ColumnarValue>,
    rows: usize,
) -> Result<Vec<Option<i64>>> {
    let unit = start.map(|s| s.data_type());
    let per_day: Option<i64> = match unit {
        Some(DataType::Date32) | Some(DataType::Date64) => Some(1),
        Some(DataType::Timestamp(TimeUnit::Second, _)) => Some(86_400),
        Some(DataType::Timestamp(TimeUnit::Millisecond, _)) => Some(86_400_000),
        Some(DataType::Timestamp(TimeUnit::Microsecond, _)) => Some(86_400_000_000),
        Some(DataType::Timestamp(TimeUnit::Nanosecond, _)) => Some(86_400_000_000_000),
        _ => None,
    };
    let Some(per_day) = per_day else {
        return signed(Some(step), rows);
    };
    let interval = match step {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(i))) => *i,
        // Per-row intervals: assume the smallest unit (refuses more than it needs to).
        _ => return Ok(vec![Some(1); rows]),
    };
    // A descending series steps by a negative interval: its length is the same.
    let days = (i64::from(interval.months) * 30 + i64::from(interval.days)).unsigned_abs();
    let nanos_per_unit = 86_400_000_000_000 / per_day;
    let units = days
        .saturating_mul(per_day.unsigned_abs())
        .saturating_add(interval.nanoseconds.unsigned_abs() / nanos_per_unit.unsigned_abs().max(1));
    let units = i64::try_from(units).unwrap_or(i64::MAX).max(1);
    Ok(vec![Some(units); rows])
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn size_chosen_functions_are_refused_past_the_limit() {
        let ctx = SessionContext::new();
        register(&ctx, 1 << 20).unwrap();
        for sql in [
            "SELECT repeat('x', 2000000000)",
            "SELECT lpad('x', 2000000000)",
            "SELECT rpad('x', 2000000000, 'y')",
            "SELECT range(1, 10000000000)",
            "SELECT generate_series(1, 10000000000)",
            "SELECT array_repeat(1, 1000000000)",
            "SELECT array_resize(make_array(1), 1000000000)",
            "SELECT repeat(s, 1000) FROM (VALUES (repeat('x', 2000))) AS t(s)",
            "SELECT range(TIMESTAMP '2020-01-01', TIMESTAMP '2021-01-01', INTERVAL '1 second')",
            "SELECT replace(repeat('x', 100000), 'x', repeat('y', 1000))",
            "SELECT replace(repeat('x', 100000), '', repeat('y', 100))",
            "SELECT regexp_replace(repeat('x', 100000), '(?:)', repeat('y', 100), 'g')",
            "SELECT concat(repeat('x', 600000), repeat('y', 600000))",
            "SELECT concat_ws(repeat(',', 600000), repeat('y', 600000), 'z')",
            "SELECT array_concat(array_repeat(1, 100000), array_repeat(2, 100000))",
        ] {
            let e = match run(&ctx, sql).await {
                Ok(rows) => panic!("{sql}: answered {rows} rows"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("more than the 1048576 bytes"), "{sql}: {e}");
        }
    }

    #[tokio::test]
    async fn small_calls_answer_as_the_built_in_functions() {
        let ctx = SessionContext::new();
        register(&ctx, 1 << 20).unwrap();
        let batches = ctx
            .sql(
                "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, \
                 cardinality(range(1, 11)) AS n, replace('a-b', '-', '+') AS x, \
                 concat('a', 'b', 1) AS c, cardinality(array_concat([1], [2, 3])) AS m, \
                 regexp_replace('a1b22', '[0-9]+', 'N', 'g') AS g",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(
            text.contains("| ababab | 007 | 10 | a+b | ab1 | 3 | aNbN |"),
            "{text}"
        );
        let descending =
            "SELECT cardinality(range(TIMESTAMP '2020-01-10', TIMESTAMP '2020-01-01', \
                          INTERVAL '-1 day'))";
        assert_eq!(run(&ctx, descending).await.unwrap(), 1);
        assert_eq!(
            run(&ctx, "SELECT * FROM range(1, 100001)").await.unwrap(),
            100_000,
            "the range table function streams and is left alone"
        );
    }
}
