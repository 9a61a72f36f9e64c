//! The sled backend against the store conformance suite (`conformance/`), the same cases a PostgreSQL backend runs.

mod conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_backend_conforms() {
    conformance::run_all(|dir| meterd::store::Store::open(dir).unwrap(), conformance::Capabilities::ALL).await;
}
