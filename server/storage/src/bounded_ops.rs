//! The `||` operator and the functions the SQL planner calls directly, routed through the
//! size checks of [`crate::bounded`]: `a || b` on strings is planned as an operator, not as a
//! call to `concat`, and `list || list` as the built-in `array_concat` rather than the one
//! the session registered, so both would slip past the bounds (a chain of `s || s` over a few
//! nested subqueries builds gigabytes no memory pool accounts for).
//!
//! An analyzer rule, run after type coercion, rewrites each string `||` into a call of
//! [`ConcatOperator`] (the same result and NULL handling, with the size check in front) and
//! replaces every call of a function the session bounds by the session's bounded version.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::compute::kernels::concat_elements::concat_elements_dyn;
use arrow_schema::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

use crate::bounded::sum_bytes;

/// Adds the rule to `ctx`, whose bounded functions [`crate::bounded::register`] registered.
pub(crate) fn register(ctx: &SessionContext, limit: u64) {
    let mut bounded = HashMap::new();
    for name in crate::bounded::NAMES {
        if let Ok(udf) = ctx.udf(name) {
            bounded.insert(name.to_string(), udf);
        }
    }
    let concat = Arc::new(ScalarUDF::new_from_impl(ConcatOperator::new(limit)));
    ctx.add_analyzer_rule(Arc::new(BoundOperators { bounded, concat }));
}

/// The analyzer rule; see the module docs.
#[derive(Debug)]
struct BoundOperators {
    /// The session's bounded functions by name.
    bounded: HashMap<String, Arc<ScalarUDF>>,
    concat: Arc<ScalarUDF>,
}

impl AnalyzerRule for BoundOperators {
    fn name(&self) -> &str {
        "bound_operators"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let names = NamePreserver::new(&plan);
            plan.map_expressions(|expr| {
                let name = names.save(&expr);
                let rewritten = expr.transform_up(|e| self.rewrite(e))?;
                Ok(rewritten.update_data(|e| name.restore(e)))
            })
        })
        .data()
    }
}

impl BoundOperators {
    fn rewrite(&self, e: Expr) -> Result<Transformed<Expr>> {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::StringConcat,
                right,
            }) => {
                let call = ScalarFunction::new_udf(self.concat.clone(), vec![*left, *right]);
                Ok(Transformed::yes(Expr::ScalarFunction(call)))
            }
            Expr::ScalarFunction(f) => match self.bounded.get(f.name()) {
                Some(udf) if !Arc::ptr_eq(udf, &f.func) => {
                    let call = ScalarFunction::new_udf(udf.clone(), f.args);
                    Ok(Transformed::yes(Expr::ScalarFunction(call)))
                }
                _ => Ok(Transformed::no(Expr::ScalarFunction(f))),
            },
            other => Ok(Transformed::no(other)),
        }
    }
}

/// `a || b` for two values of one string type, NULL if either is; refused past the limit.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConcatOperator {
    signature: Signature,
    limit: u64,
}

impl ConcatOperator {
    fn new(limit: u64) -> ConcatOperator {
        ConcatOperator {
            signature: Signature::any(2, Volatility::Immutable),
            limit,
        }
    }
}

impl ScalarUDFImpl for ConcatOperator {
    fn name(&self) -> &str {
        "concat_operator"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = sum_bytes(&args.args, args.number_rows);
        if bytes > self.limit {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "|| would build {bytes} bytes, more than the {} bytes one function call may \
                 build (a sixteenth of the query memory limit)",
                self.limit
            )));
        }
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [left, right] = arrays.as_slice() else {
            return Err(DataFusionError::Internal("|| takes two values".into()));
        };
        let joined = concat_elements_dyn(left.as_ref(), right.as_ref())?;
        match scalar {
            true => Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&joined, 0)?,
            )),
            false => Ok(ColumnarValue::Array(joined)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(ctx: &SessionContext, sql: &str) -> Result<String> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    fn session() -> SessionContext {
        let ctx = SessionContext::new();
        crate::bounded::register(&ctx, 1 << 20).unwrap();
        register(&ctx, 1 << 20);
        ctx
    }

    #[tokio::test]
    async fn the_concat_operator_is_bounded_and_answers_as_before() {
        let ctx = session();
        for sql in [
            "SELECT repeat('x', 600000) || repeat('y', 600000)",
            "WITH a AS (SELECT repeat('x', 300000) AS s) SELECT s || s || s || s FROM a",
            "SELECT [1, 2] || array_repeat(3, 200000)",
            "SELECT array_concat(array_repeat(1, 100000), array_repeat(2, 100000))",
        ] {
            let e = match answer(&ctx, sql).await {
                Ok(text) => panic!("{sql}: answered {}", text.len()),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("more than the 1048576 bytes"), "{sql}: {e}");
        }
        let text = answer(
            &ctx,
            "SELECT 'a' || 'b' AS ab, NULL || 'x' AS n, s || '!' AS t, \
             cardinality([1] || [2, 3]) AS c FROM (VALUES ('v'), ('w')) AS t(s) ORDER BY t",
        )
        .await
        .unwrap();
        assert!(text.contains("| ab | n | t  | c |"), "{text}");
        assert!(text.contains("| ab |   | v! | 3 |"), "{text}");
        assert!(text.contains("| ab |   | w! | 3 |"), "{text}");
    }
}
