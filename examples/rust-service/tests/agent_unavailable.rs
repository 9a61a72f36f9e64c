//! The service survives the meterd agent being down: every metered route answers 503 saying metering is
//! unavailable, and the same router keeps answering.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use meterd_proto::sdk::{Client, ClientOptions};
use tower::ServiceExt;

/// A loopback address nothing listens on: bind a port, note it, close it.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let request = Request::get(path).header("x-tenant", "acme").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metered_routes_answer_503_while_the_agent_is_down_and_keep_serving() {
    let meter = Client::new(&closed_port(), ClientOptions::default()).unwrap();
    let app = meterd_example_rust_service::router(meter);
    for path in ["/work", "/usage"] {
        for attempt in 0..2 {
            let (status, body) = get(&app, path).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path} attempt {attempt}: {body}");
            assert!(body.starts_with("metering unavailable"), "{path} attempt {attempt}: {body}");
        }
    }
}
