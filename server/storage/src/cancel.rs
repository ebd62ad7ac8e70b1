//! Cancelling a running plan from outside it.
//!
//! Aborting a task only takes effect when the task yields, and a DataFusion operator that
//! keeps producing output from buffered input (a nested-loop join over a cross product) can
//! run for minutes without yielding. So before a plan runs, every node of the physical plan
//! gets a [`Cancellable`] wrapper whose stream checks a shared flag each time its parent asks
//! for a batch: once the caller sets the flag (time limit passed, client gone), the next batch
//! any operator asks for is an error, and the plan unwinds within one batch of work.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;

/// Wraps every node of `plan` so that it stops once `cancelled` is set.
pub(crate) fn cancellable(
    plan: Arc<dyn ExecutionPlan>,
    cancelled: &Arc<AtomicBool>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan
        .children()
        .into_iter()
        .map(|child| cancellable(child.clone(), cancelled))
        .collect::<Result<Vec<_>>>()?;
    let plan = match children.is_empty() {
        true => plan,
        // The wrappers answer their input's properties, so the node's stay as they are.
        false => plan.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )?,
    };
    Ok(Arc::new(Cancellable {
        input: plan,
        cancelled: cancelled.clone(),
    }))
}

/// One node of a plan, with the cancellation check in front of its stream.
#[derive(Debug)]
struct Cancellable {
    input: Arc<dyn ExecutionPlan>,
    cancelled: Arc<AtomicBool>,
}

impl DisplayAs for Cancellable {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Cancellable")
    }
}

impl ExecutionPlan for Cancellable {
    fn name(&self) -> &str {
        "Cancellable"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Cancellable {
                input,
                cancelled: self.cancelled.clone(),
            })),
            _ => Err(DataFusionError::Internal(
                "Cancellable wraps exactly one plan".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut inner = self.input.execute(partition, context)?;
        let schema = inner.schema();
        let cancelled = self.cancelled.clone();
        let checked = futures::stream::poll_fn(move |cx| {
            if cancelled.load(Ordering::Relaxed) {
                return Poll::Ready(Some(Err(DataFusionError::Execution(
                    "the query was cancelled".into(),
                ))));
            }
            inner.poll_next_unpin(cx)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, checked)))
    }
}
