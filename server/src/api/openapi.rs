//! The OpenAPI 3 document of meshtrace's own HTTP API (`/api/v1/*`: provenance, classes,
//! budgets, priorities, SQL) and of the RED metrics it serves in Jaeger's form (`/api/metrics/*`), generated from the handlers' annotations and the Rust types they
//! answer. The same router ([`v1_router`]) serves the routes and lists them, so the document
//! cannot name a route the server does not have. It is served at `/api/v1/openapi.json` and
//! committed as `docs/openapi.json`, from which the dashboard's TypeScript types are
//! generated; a test fails when the two differ (`meshtrace openapi > docs/openapi.json`
//! writes it again).

use std::sync::OnceLock;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{budgets, priorities, provenance, spm, sql, ApiState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshtrace",
        description = "meshtrace's own HTTP API on the query port: service graph and trace \
                       provenance, trace classes, latency budgets, priority assignments for mesh \
                       proxies, read-only SQL, and RED metrics in the form of Jaeger's SPM API. The Jaeger query API (`/api/...`) and Jaeger \
                       api_v3 (`/api/v3/...`) are served beside it as Jaeger documents them.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "provenance", description = "service graph, trace provenance and classes of traces"),
        (name = "classes", description = "trace-class rules and the learned class mapping"),
        (name = "budgets", description = "latency objectives and per-hop budgets"),
        (name = "priorities", description = "priority assignment sets published to proxies"),
        (name = "sql", description = "read-only SQL over spans and derived tables"),
        (name = "metrics", description = "RED metrics per service and operation, as Jaeger's \
                                          Service Performance Monitoring API serves them"),
    ),
    // Parameter schemas written by hand (the routes only refer to them).
    components(schemas(super::params::TraceIdHex))
)]
struct ApiDoc;

/// The `/api/v1` routes, with their documentation.
pub fn v1_router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(provenance::graph))
        .routes(routes!(provenance::trace_classes))
        .routes(routes!(provenance::trace_provenance))
        .routes(routes!(provenance::get_classes, provenance::put_classes))
        .routes(routes!(provenance::class_mapping))
        .routes(routes!(budgets::get_objective, budgets::put_objective))
        .routes(routes!(budgets::budgets))
        .routes(routes!(budgets::budget_history))
        .routes(routes!(priorities::priorities))
        .routes(routes!(
            priorities::get_overrides,
            priorities::put_overrides
        ))
        .routes(routes!(priorities::history))
        .routes(routes!(priorities::proxies))
        .routes(routes!(sql::query))
        .routes(routes!(spm::minstep))
        .routes(routes!(spm::latencies))
        .routes(routes!(spm::rates))
}

/// The document (built once).
pub fn document() -> utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| v1_router().split_for_parts().1).clone()
}

/// The document as committed: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut s = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is what the code generates: the dashboard's types come from it.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == document_json(),
            "docs/openapi.json differs from the API the code serves; \
             run `cargo run -- openapi > docs/openapi.json` and commit it"
        );
    }

    #[test]
    fn every_v1_route_is_documented() {
        let doc = document();
        for path in [
            "/api/v1/graph",
            "/api/v1/traces/{trace_id}/provenance",
            "/api/v1/traces/classes",
            "/api/v1/classes",
            "/api/v1/classes/mapping",
            "/api/v1/classes/{class}/objective",
            "/api/v1/budgets",
            "/api/v1/budgets/history",
            "/api/v1/priorities",
            "/api/v1/priorities/overrides",
            "/api/v1/priorities/history",
            "/api/v1/proxies",
            "/api/v1/sql",
            "/api/metrics/latencies",
            "/api/metrics/{metric}",
            "/api/metrics/minstep",
        ] {
            assert!(
                doc.paths.paths.contains_key(path),
                "{path} is not documented"
            );
        }
    }
}
