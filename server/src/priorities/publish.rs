//! Publishing assignment sets: one `tokio::sync::watch` channel per service, so every HTTP
//! long poll and gRPC `WatchPriorities` stream of the service wakes up as soon as a new
//! version is sent; the JSON form of a set (HTTP answers and catalog bodies); and the gRPC
//! service, which turns a watch receiver into a stream (the current set first, then every
//! change) the way linkerd2-proxy's tonic-watch does on the client side.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use futures::Stream;
use meshtrace_budget::{Assignment, AssignmentSet, MatchRule, Signature};
use meshtrace_proto::priorities::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::{Request, Response, Status};

use super::{is_valid_name, Priorities, MAX_NAME_CHARS};
use axum::http::HeaderValue;
use meshtrace_collector::auth::{tenant_of, Access, Auth, Caller, Scope};
use meshtrace_collector::peer::Peer;
use meshtrace_model::tenant::{TenantId, TENANT_HEADER};

/// Channels kept before unwatched, unpublished ones are dropped.
const PRUNE_AT: usize = 1024;

/// The watch channels of every service asked about or published.
#[derive(Default)]
pub struct Board {
    chans: Mutex<HashMap<String, watch::Sender<Arc<AssignmentSet>>>>,
}

impl Board {
    fn with<T>(&self, service: &str, f: impl FnOnce(&watch::Sender<Arc<AssignmentSet>>) -> T) -> T {
        let mut chans = self.chans.lock().unwrap_or_else(PoisonError::into_inner);
        // Anyone may ask about any name: past a size, channels nobody watches of services
        // never published are dropped, so the map holds published and watched services only.
        if chans.len() >= PRUNE_AT && !chans.contains_key(service) {
            chans.retain(|_, tx| tx.receiver_count() > 0 || tx.borrow().version > 0);
        }
        let tx = chans
            .entry(service.to_string())
            .or_insert_with(|| watch::channel(Arc::new(AssignmentSet::empty(service))).0);
        f(tx)
    }

    /// Receivers open now: proxies long-polling or watching.
    pub fn watchers(&self) -> usize {
        let chans = self.chans.lock().unwrap_or_else(PoisonError::into_inner);
        chans.values().map(watch::Sender::receiver_count).sum()
    }

    /// A receiver of a service's sets (an unknown service starts at the empty set, version 0).
    pub fn subscribe(&self, service: &str) -> watch::Receiver<Arc<AssignmentSet>> {
        self.with(service, watch::Sender::subscribe)
    }

    /// The current set of a service, without creating a channel for an unknown one.
    pub fn current(&self, service: &str) -> Arc<AssignmentSet> {
        let chans = self.chans.lock().unwrap_or_else(PoisonError::into_inner);
        chans
            .get(service)
            .map(|tx| tx.borrow().clone())
            .unwrap_or_else(|| Arc::new(AssignmentSet::empty(service)))
    }

    /// Sends a new set to every watcher of its service.
    pub fn publish(&self, set: AssignmentSet) {
        let service = set.service.clone();
        self.with(&service, |tx| {
            tx.send_replace(Arc::new(set));
        });
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignatureJson {
    pub caller: String,
    pub operation: String,
    pub share: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MatchJson {
    pub header: Option<NameValue>,
    pub baggage: Option<KeyValue>,
    pub signatures: Vec<SignatureJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssignmentJson {
    pub class: String,
    pub priority: u8,
    pub timeout_ms: f64,
    #[serde(rename = "match")]
    pub matching: MatchJson,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_share: Option<f64>,
}

/// A set as `GET /api/v1/priorities` answers it (and as the catalog stores it).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetJson {
    pub version: u64,
    pub service: String,
    pub generated_at: String,
    /// `generated_at` in unix nanoseconds: the end of the window step the set was computed
    /// for (or the objective/override change that triggered it), for latency measurements.
    #[serde(default)]
    pub generated_at_ns: i64,
    pub assignments: Vec<AssignmentJson>,
}

impl From<&AssignmentSet> for SetJson {
    fn from(s: &AssignmentSet) -> Self {
        SetJson {
            version: s.version,
            service: s.service.clone(),
            generated_at: meshtrace_model::time::rfc3339(s.generated_at_ns),
            generated_at_ns: s.generated_at_ns,
            assignments: s.assignments.iter().map(assignment_json).collect(),
        }
    }
}

fn assignment_json(a: &Assignment) -> AssignmentJson {
    let m = &a.r#match;
    AssignmentJson {
        class: a.class.clone(),
        priority: a.priority,
        timeout_ms: a.timeout_ms,
        matching: MatchJson {
            header: m
                .header
                .clone()
                .map(|(name, value)| NameValue { name, value }),
            baggage: m
                .baggage
                .clone()
                .map(|(key, value)| KeyValue { key, value }),
            signatures: m
                .signatures
                .iter()
                .map(|s| SignatureJson {
                    caller: s.caller.clone(),
                    operation: s.operation.clone(),
                    share: s.share,
                })
                .collect(),
        },
        reason: a.reason.clone(),
        min_share: a.min_share,
    }
}

impl SetJson {
    /// Back to an assignment set (when restoring from the catalog).
    pub fn into_set(self, generated_at_ns: i64) -> AssignmentSet {
        AssignmentSet {
            version: self.version,
            service: self.service,
            generated_at_ns,
            assignments: self
                .assignments
                .into_iter()
                .map(|a| Assignment {
                    class: a.class,
                    priority: a.priority,
                    timeout_ms: a.timeout_ms,
                    r#match: MatchRule {
                        header: a.matching.header.map(|h| (h.name, h.value)),
                        baggage: a.matching.baggage.map(|b| (b.key, b.value)),
                        signatures: a
                            .matching
                            .signatures
                            .into_iter()
                            .map(|s| Signature {
                                caller: s.caller,
                                operation: s.operation,
                                share: s.share,
                            })
                            .collect(),
                    },
                    reason: a.reason,
                    min_share: a.min_share,
                })
                .collect(),
        }
    }
}

/// Counts a watcher (long poll or stream) while alive.
pub struct WatcherGuard {
    p: Priorities,
}

impl WatcherGuard {
    pub fn new(p: &Priorities) -> Self {
        p.inner
            .watchers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WatcherGuard { p: p.clone() }
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.p
            .inner
            .watchers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a watch finds its tenant's priorities (see `crate::tenants`).
pub trait PrioritiesOf: Send + Sync + 'static {
    fn priorities(&self, tenant: &TenantId) -> BoxFuture<'static, Result<Priorities, Status>>;
}

/// The gRPC `meshtrace.priorities.v1.Priorities` service.
pub struct WatchService {
    source: Arc<dyn PrioritiesOf>,
}

/// The watch service behind the token check ([`meshtrace_collector::auth`]): `proxy` (or
/// `read`) scope; the caller is left in the request's extensions.
pub type GuardedWatch =
    InterceptedService<pb::priorities_server::PrioritiesServer<WatchService>, TokenCheck>;

/// The interceptor of [`GuardedWatch`].
#[derive(Clone)]
pub struct TokenCheck(Auth);

impl Interceptor for TokenCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let peer = Peer::of(req.extensions());
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        let access = Access::of(&[Scope::Proxy, Scope::Read]);
        let caller = self
            .0
            .authorize(header.as_ref(), &peer, access)
            .map_err(|e| e.grpc_status())?;
        let named = req.metadata().get(TENANT_HEADER).map(|v| v.as_bytes());
        let tenant = tenant_of(&caller, named).map_err(|e| e.grpc_status())?;
        req.extensions_mut().insert(caller);
        req.extensions_mut().insert(tenant);
        Ok(req)
    }
}

impl WatchService {
    /// The service for the tenants `source` serves.
    pub fn server(source: Arc<dyn PrioritiesOf>, auth: Auth) -> GuardedWatch {
        let server = pb::priorities_server::PrioritiesServer::new(WatchService { source });
        InterceptedService::new(server, TokenCheck(auth))
    }
}

type SetStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentSet, Status>> + Send>>;

/// State of one stream: the receiver, whether the current set was sent, and who watches.
struct Watch {
    rx: watch::Receiver<Arc<AssignmentSet>>,
    sent_first: bool,
    node: String,
    _guard: WatcherGuard,
    p: Priorities,
}

#[tonic::async_trait]
impl pb::priorities_server::Priorities for WatchService {
    type WatchPrioritiesStream = SetStream;

    async fn watch_priorities(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<SetStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let tenant = request.extensions().get::<TenantId>().cloned();
        let p = self.source.priorities(&tenant.unwrap_or_default()).await?;
        let req = request.into_inner();
        if !is_valid_name(&req.service) {
            return Err(Status::invalid_argument(format!(
                "service must be 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        if !req.node.is_empty() && !is_valid_name(&req.node) {
            return Err(Status::invalid_argument(format!(
                "node must be at most {MAX_NAME_CHARS} characters"
            )));
        }
        if let Some(c) = caller.filter(|c| !c.may_act_for(Scope::Proxy, &req.service)) {
            return Err(Status::permission_denied(format!(
                "{} may not watch the priorities of service {:?}",
                c.name(),
                req.service
            )));
        }
        let node = if req.node.is_empty() {
            "-".to_string()
        } else {
            req.node
        };
        tracing::debug!(service = %req.service, %node, "priority watch started");
        let state = Watch {
            rx: p.inner.board.subscribe(&req.service),
            sent_first: false,
            node,
            _guard: WatcherGuard::new(&p),
            p: p.clone(),
        };
        let stream = futures::stream::unfold(state, |mut w| async move {
            if w.sent_first {
                tokio::select! {
                    changed = w.rx.changed() => changed.ok()?,
                    _ = w.p.inner.stop.cancelled() => return None,
                }
            }
            w.sent_first = true;
            let set = w.rx.borrow_and_update().clone();
            w.p.record_proxy(&set.service, &w.node, "grpc", set.version);
            Some((Ok(pb::AssignmentSet::from(&*set)), w))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
