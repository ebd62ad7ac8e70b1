//! Tests of the generated code: messages round-trip through the protobuf encoding, and the
//! generated server and client talk to each other over a loopback connection.

use std::pin::Pin;

use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::priorities::v1::priorities_client::PrioritiesClient;
use crate::priorities::v1::priorities_server::{Priorities, PrioritiesServer};
use crate::priorities::v1::{Assignment, AssignmentSet, MatchRule, Signature, WatchRequest};

fn sample(service: &str) -> AssignmentSet {
    AssignmentSet {
        version: 3,
        service: service.to_string(),
        generated_at: 1_700_000_000_123_456_789,
        assignments: vec![Assignment {
            class: "interactive".into(),
            priority: 0,
            timeout_ms: 125.5,
            r#match: Some(MatchRule {
                header_name: "x-mesh-class".into(),
                header_value: "interactive".into(),
                baggage_key: "mesh.class".into(),
                baggage_value: "interactive".into(),
                signatures: vec![Signature {
                    caller: "frontend".into(),
                    operation: "GET /cart".into(),
                    share: 0.75,
                }],
            }),
            reason: "operator override".into(),
            min_share: Some(0.2),
        }],
    }
}

#[test]
fn assignment_set_round_trips_through_protobuf() {
    let set = sample("checkout");
    let bytes = set.encode_to_vec();
    assert!(!bytes.is_empty());
    let back = AssignmentSet::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, set);
    // An unset optional stays unset.
    let mut no_share = set.clone();
    no_share.assignments[0].min_share = None;
    let back = AssignmentSet::decode(no_share.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back.assignments[0].min_share, None);
}

struct Fixed;

type SetStream = Pin<Box<dyn Stream<Item = Result<AssignmentSet, Status>> + Send>>;

#[tonic::async_trait]
impl Priorities for Fixed {
    type WatchPrioritiesStream = SetStream;

    async fn watch_priorities(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchPrioritiesStream>, Status> {
        let req = request.into_inner();
        if req.service.is_empty() {
            return Err(Status::invalid_argument("service is required"));
        }
        let first = sample(&req.service);
        let mut second = first.clone();
        second.version += 1;
        second.assignments[0].priority = 2;
        let items = vec![Ok(first), Ok(second)];
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

#[tokio::test]
async fn generated_server_and_client_stream_assignment_sets() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PrioritiesServer::new(Fixed))
            .serve_with_incoming(incoming),
    );

    let mut client = PrioritiesClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let mut stream = client
        .watch_priorities(WatchRequest {
            service: "cart".into(),
            node: "node-1".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut got = Vec::new();
    while let Some(set) = stream.next().await {
        got.push(set.expect("item"));
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], sample("cart"));
    assert_eq!((got[1].version, got[1].assignments[0].priority), (4, 2));

    let err = client
        .watch_priorities(WatchRequest::default())
        .await
        .expect_err("empty service is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.abort();
}
