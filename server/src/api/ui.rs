//! The web dashboard: the files Vite builds into `ui/dist` are embedded into the binary with
//! rust-embed (`build.rs` makes sure they exist) and served on the query port as the router's
//! fallback. Paths that name an embedded file get it with its content type; other page paths
//! (`/search`, `/trace/{id}`, ...) get `index.html` so the client-side router can take over;
//! `/api/...` paths and paths with a file extension that is not embedded get a 404.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

/// The built dashboard (`ui/dist`).
#[derive(Embed)]
#[folder = "../ui/dist"]
struct Assets;

/// Restricts the dashboard to its own origin: scripts, styles, images and API calls all come
/// from the server itself, and nothing may frame it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Fallback handler of the query router: serves the dashboard.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return not_found();
    }
    let path = uri.path().trim_start_matches('/');
    if path == "api" || path.starts_with("api/") {
        return not_found();
    }
    let (name, file) = match Assets::get(path).filter(|_| !path.is_empty()) {
        Some(file) => (path, file),
        None if looks_like_file(path) => return not_found(),
        None => match Assets::get("index.html") {
            Some(file) => ("index.html", file),
            None => return not_found(),
        },
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let cache = if name.starts_with("assets/") {
        // Vite puts a content hash in every asset name.
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if etag_matches(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mime = content_type(name, &file);
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(file.data)
        };
        let mut r = Response::new(body);
        insert(&mut r, header::CONTENT_TYPE, &mime);
        r
    };
    insert(&mut response, header::ETAG, &etag);
    insert(&mut response, header::CACHE_CONTROL, cache);
    insert(&mut response, header::CONTENT_SECURITY_POLICY, CSP);
    insert(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    insert(&mut response, header::REFERRER_POLICY, "no-referrer");
    response
}

fn content_type(name: &str, file: &rust_embed::EmbeddedFile) -> String {
    let mime = file.metadata.mimetype();
    if mime.starts_with("text/") || mime == "application/javascript" || name.ends_with(".js") {
        let mime = if name.ends_with(".js") {
            "text/javascript"
        } else {
            mime
        };
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// A last path segment with an extension names a file, not a page of the dashboard.
fn looks_like_file(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .and_then(|last| last.rsplit_once('.'))
        .is_some_and(|(stem, ext)| {
            !stem.is_empty()
                && (1..=5).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn insert(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"data":null,"errors":[{"code":404,"msg":"not found"}]}"#,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn get(path: &str) -> Response {
        serve(Method::GET, path.parse().unwrap(), HeaderMap::new()).await
    }

    async fn text(r: Response) -> String {
        String::from_utf8(to_bytes(r.into_body(), 1 << 24).await.unwrap().to_vec()).unwrap()
    }

    fn ctype(r: &Response) -> String {
        r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn index_and_spa_routes_serve_html() {
        for path in [
            "/",
            "/search?service=a",
            "/trace/0123456789abcdef",
            "/graph",
        ] {
            let r = get(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(ctype(&r), "text/html; charset=utf-8", "{path}");
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
            assert!(text(r).await.contains("<title>meshtrace</title>"), "{path}");
        }
    }

    #[tokio::test]
    async fn assets_have_their_content_types() {
        let mut seen = 0;
        for name in Assets::iter() {
            let want = if name.ends_with(".js") {
                "text/javascript; charset=utf-8"
            } else if name.ends_with(".css") {
                "text/css; charset=utf-8"
            } else {
                continue;
            };
            let r = get(&format!("/{name}")).await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(ctype(&r), want, "{name}");
            assert!(r.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("immutable"));
            seen += 1;
        }
        // The placeholder page (no npm at build time) has no assets.
        let placeholder = text(get("/").await)
            .await
            .contains("meshtrace-ui-placeholder");
        assert!(placeholder || seen >= 2, "expected built js and css assets");
    }

    #[tokio::test]
    async fn api_paths_and_missing_files_are_not_found() {
        for path in [
            "/api/nope",
            "/api",
            "/assets/missing-abc123.js",
            "/favicon.ico",
        ] {
            assert_eq!(get(path).await.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let post = serve(Method::POST, "/search".parse().unwrap(), HeaderMap::new()).await;
        assert_eq!(post.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn etag_revalidation_answers_not_modified() {
        let etag = get("/").await.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        let r = serve(Method::GET, "/".parse().unwrap(), headers).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn file_like_paths() {
        assert!(looks_like_file("assets/index-abc.js"));
        assert!(looks_like_file("favicon.ico"));
        assert!(!looks_like_file("trace/0123abcd"));
        assert!(!looks_like_file("search"));
        assert!(!looks_like_file(".well-known"));
    }
}
