//! The Rust client SDK: retry and key behaviour against an in-process scripted server (deterministic), and the
//! whole path against the real `meterd` binary ($METERD_BIN, or `meterd` next to this test's target dir).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meterd_proto::sdk::{Client, ClientOptions, Customer, Error, RetryPolicy, Usage};
use meterd_proto::v1::{self, metering_server::Metering, metering_server::MeteringServer};
use tonic::{Request, Response, Status};

/// Answers each call with the next scripted reply (or a receipt when the script is empty) and remembers the
/// idempotency keys it saw.
#[derive(Default, Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Vec<String>>>>,
}

enum Reply {
    Fail(Status),
    Hang(Duration),
}

fn receipt(key: &str) -> v1::Receipt {
    v1::Receipt { idempotency_key: key.into(), product: "demo".into(), ..Default::default() }
}

impl Scripted {
    async fn next(&self, keys: Vec<String>) -> Result<(), Status> {
        self.seen.lock().unwrap().push(keys);
        let reply = self.script.lock().unwrap().pop_front();
        match reply {
            Some(Reply::Fail(s)) => Err(s),
            Some(Reply::Hang(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Metering for Scripted {
    async fn record_usage(
        &self,
        request: Request<v1::RecordUsageRequest>,
    ) -> Result<Response<v1::RecordUsageResponse>, Status> {
        let key = request.into_inner().event.unwrap().idempotency_key;
        self.next(vec![key.clone()]).await?;
        Ok(Response::new(v1::RecordUsageResponse { receipt: Some(receipt(&key)) }))
    }

    async fn record_usage_batch(
        &self,
        request: Request<v1::RecordUsageBatchRequest>,
    ) -> Result<Response<v1::RecordUsageBatchResponse>, Status> {
        let keys: Vec<String> = request.into_inner().events.into_iter().map(|e| e.idempotency_key).collect();
        self.next(keys.clone()).await?;
        let results = keys
            .iter()
            .map(|k| v1::EventResult {
                // "bad-" cannot begin a generated key (a UUID has 8 hex digits before its first dash); a bare
                // "bad" prefix matched one generated key in 4,096 and made the batch test flaky.
                outcome: Some(if k.starts_with("bad-") {
                    v1::event_result::Outcome::Error(v1::EventError {
                        code: 3,
                        field: "events[0].quantity".into(),
                        message: "events[0].quantity: bad".into(),
                    })
                } else {
                    v1::event_result::Outcome::Receipt(receipt(k))
                }),
            })
            .collect();
        Ok(Response::new(v1::RecordUsageBatchResponse { results }))
    }
}

async fn serve(server: Scripted) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MeteringServer::new(server))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr.to_string()
}

fn fast_retries(max_attempts: u32) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        },
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn retries_unavailable_with_the_same_generated_key() {
    let server = Scripted::default();
    server
        .script
        .lock()
        .unwrap()
        .extend([Reply::Fail(Status::unavailable("store closed")), Reply::Fail(Status::unavailable("store closed"))]);
    let client = Client::new(&serve(server.clone()).await, fast_retries(5)).unwrap();
    let r = client.record_usage(Usage::new("acme", "api_calls", 1u32)).await.unwrap();
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two failures, then success");
    assert!(seen.iter().all(|k| k == &vec![r.idempotency_key.clone()]), "every attempt reuses one key: {seen:?}");
    // A second logical event gets a new key.
    let r2 = client.record_usage(Usage::new("acme", "api_calls", 1u32)).await.unwrap();
    assert_ne!(r2.idempotency_key, r.idempotency_key);
}

#[tokio::test]
async fn refusals_are_not_retried_and_are_typed() {
    let server = Scripted::default();
    server.script.lock().unwrap().extend([
        Reply::Fail(Status::invalid_argument("event.quantity: \"x\" is not a decimal")),
        Reply::Fail(Status::already_exists("event.idempotency_key: used")),
        Reply::Fail(Status::failed_precondition("event.customer: license deprovisioned")),
    ]);
    let client = Client::new(&serve(server.clone()).await, fast_retries(5)).unwrap();
    let u = || Usage::new("acme", "api_calls", "x").idempotency_key("k1");
    let e = client.record_usage(u()).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidUsage { field, .. } if field == "event.quantity"), "{e:?}");
    assert_eq!(client.record_usage(u()).await.unwrap_err().code(), "CONFLICT");
    assert_eq!(client.record_usage(u()).await.unwrap_err().code(), "CUSTOMER_NOT_ACTIVE");
    assert_eq!(server.seen.lock().unwrap().len(), 3, "one attempt each");
}

#[tokio::test]
async fn attempts_and_timeout_bound_the_call() {
    let server = Scripted::default();
    server.script.lock().unwrap().extend((0..10).map(|_| Reply::Fail(Status::unavailable("down"))));
    let client = Client::new(&serve(server.clone()).await, fast_retries(3)).unwrap();
    let e = client.record_usage(Usage::new("acme", "api_calls", 1u32)).await.unwrap_err();
    assert_eq!(e.code(), "AGENT_UNAVAILABLE");
    assert!(e.is_retryable());
    assert_eq!(server.seen.lock().unwrap().len(), 3);

    let slow = Scripted::default();
    slow.script.lock().unwrap().extend((0..10).map(|_| Reply::Hang(Duration::from_secs(30))));
    let options = ClientOptions { timeout: Duration::from_millis(300), ..fast_retries(10) };
    let client = Client::new(&serve(slow).await, options).unwrap();
    let started = Instant::now();
    let e = client.record_usage(Usage::new("acme", "api_calls", 1u32)).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connection_refused_is_agent_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Client::new(&format!("127.0.0.1:{port}"), fast_retries(2)).unwrap();
    let e = client.status().await.unwrap_err();
    assert_eq!(e.code(), "AGENT_UNAVAILABLE", "{e:?}");
    assert!(matches!(Client::new("nonsense", ClientOptions::default()), Err(Error::InvalidTarget { .. })));
}

#[tokio::test]
async fn batches_are_split_in_order_and_keep_keys_across_retries() {
    let server = Scripted::default();
    server.script.lock().unwrap().push_back(Reply::Fail(Status::unavailable("flaky")));
    let options = ClientOptions { max_batch_events: 4, ..fast_retries(5) };
    let client = Client::new(&serve(server.clone()).await, options).unwrap();
    let mut usages: Vec<Usage> = (0..10).map(|i| Usage::new("acme", "api_calls", i as u32)).collect();
    usages[5] = usages[5].clone().idempotency_key("bad-1");
    let results = client.record_usage_batch(&usages).await.unwrap();
    assert_eq!(results.len(), 10);
    assert!(matches!(&results[5], Err(Error::InvalidUsage { .. })));
    let failed: Vec<_> = results.iter().enumerate().filter(|(i, r)| *i != 5 && r.is_err()).collect();
    assert!(failed.is_empty(), "only usage 5 may fail: {failed:?}");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 4, 2], "chunk 1 retried once");
    assert_eq!(seen[0], seen[1], "the retried chunk resent the same keys");
    let keys: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| &r.idempotency_key).collect();
    assert_eq!(keys[0], &seen[1][0]);
    assert!(client.record_usage_batch(&[]).await.is_err());
}

// ---- against the real agent -------------------------------------------------------------------------------

fn meterd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("METERD_BIN") {
        return p.into();
    }
    // target/<profile>/deps/sdk-<hash> → target/<profile>/meterd
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join("meterd")
}

struct Agent {
    child: Child,
    target: String,
    /// The embedded emulator (`--simulate`), `http://IP:PORT`.
    emulator: String,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Tells the embedded emulator the agreement ended, so DescribeAgreement confirms an end event.
    fn end_agreement(&self, agreement_id: &str) {
        use std::io::{Read, Write};
        let addr = self.emulator.trim_start_matches("http://");
        let body = format!(r#"{{"agreement_id":"{agreement_id}","status":"TERMINATED"}}"#);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "PUT /_emulator/agreements HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meterd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n[pipeline]\nlate_usage = \"reject\"\n\
             [products.demo]\nidentity = \"license\"\ndimensions = [\"api_calls\", \"storage_gb_hours\"]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let bin = meterd_bin();
    assert!(bin.exists(), "{} not found: build it (cargo build -p meterd) or set METERD_BIN", bin.display());
    let mut child = Command::new(bin)
        .args(["run", "--simulate", "--speed", "1", "--config"])
        .arg(&config)
        .env("METERD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let target = line.split_whitespace().find_map(|f| f.strip_prefix("tcp=")).expect("ready line").to_string();
    let emulator = line.split_whitespace().find_map(|f| f.strip_prefix("emulator=")).expect("ready line").to_string();
    Agent { child, target, emulator, _dir: dir }
}

#[tokio::test]
async fn against_the_real_agent() {
    let agent = start_agent();
    let client = Client::connect(&agent.target, ClientOptions::default()).await.unwrap();
    let r = client.record_usage(Usage::new("acme", "api_calls", "2.5").tag("team", "a")).await.unwrap();
    assert!(!r.replayed);
    let aws = Customer::aws("111122223333", "arn:aws:license-manager::111122223333:license:l-demo-demo");
    client.record_usage(Usage::new(aws, "storage_gb_hours", 3u64)).await.unwrap();
    let replay = client
        .record_usage(Usage::new("acme", "api_calls", "2.5").tag("team", "a").idempotency_key(&r.idempotency_key))
        .await
        .unwrap();
    assert!(replay.replayed);
    let conflict = client.record_usage(Usage::new("acme", "api_calls", "1").idempotency_key(&r.idempotency_key)).await;
    assert_eq!(conflict.unwrap_err().code(), "CONFLICT");
    let bad = client.record_usage(Usage::new("acme", "nope", 1u32)).await.unwrap_err();
    assert_eq!(bad.field(), Some("event.dimension"));
    let late = Usage::new("acme", "api_calls", 1u32).at(std::time::SystemTime::now() - Duration::from_secs(7200));
    client.flush().await.unwrap();
    assert_eq!(client.record_usage(late).await.unwrap_err().code(), "LATE_USAGE_REJECTED");
    let batch = vec![Usage::new("acme", "api_calls", 1u32), Usage::new("acme", "bad", 1u32)];
    let results = client.record_usage_batch(&batch).await.unwrap();
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().field(), Some("events[1].dimension"));
    let report = client.report().await.unwrap();
    let totals = report.totals.unwrap();
    assert_eq!(totals.recorded, "6.5");
    assert!(totals.reconciled);
    assert_eq!(client.status().await.unwrap().events_stored, 3);
}

#[tokio::test]
async fn customers_against_the_real_agent() {
    const ARN: &str = "arn:aws:license-manager::111122223333:license:l-0123456789abcdef";
    let agent = start_agent();
    let client = Client::connect(&agent.target, ClientOptions::default()).await.unwrap();
    client.record_usage(Usage::new("acme-co", "api_calls", 2u32)).await.unwrap(); // held under the tenant id
    let aws = Customer::aws("111122223333", ARN);
    let put = client.put_customer("acme-co", aws.clone(), None, Some("agmt-1111111111111111111111111")).await.unwrap();
    assert_eq!((put.product.as_str(), put.status.as_str(), put.buckets_moved), ("demo", "active", 1));
    assert_eq!(put.customer, Some(aws.clone()));
    let got = client.get_customer("acme-co").await.unwrap();
    assert_eq!(got.agreement_id.as_deref(), Some("agmt-1111111111111111111111111"));
    assert_eq!(client.list_customers().await.unwrap().len(), 1);
    let missing = client.get_customer("nobody").await.unwrap_err();
    assert_eq!((missing.code(), missing.grpc_code()), ("NOT_FOUND", Some(5)));
    let tenant_as_identity = client.put_customer("x", Customer::tenant("y"), None, None).await.unwrap_err();
    assert_eq!(tenant_as_identity.code(), "INVALID_USAGE");

    let event = format!(
        r#"{{"version":"0","id":"2e72b7e1-0000-4f77-9e57-5a8bd2f7e1e5",
            "detail-type":"License Deprovisioned - Manufacturer","source":"aws.agreement-marketplace",
            "account":"999988887777","time":"2026-11-27T12:00:00Z","region":"us-east-1","resources":[],
            "detail":{{"agreement":{{"id":"agmt-1111111111111111111111111"}},"license":{{"arn":"{ARN}"}},
                       "acceptor":{{"accountId":"111122223333"}}}}}}"#
    );
    // meterd confirms end events with AWS (DescribeAgreement) before applying them.
    agent.end_agreement("agmt-1111111111111111111111111");
    let outcome = client.apply_event(&event).await.unwrap();
    assert!(outcome.applied, "{outcome:?}");
    assert_eq!(outcome.status, "deprovisioning");
    assert!(!client.apply_event(&event).await.unwrap().applied, "a duplicate changes nothing");
    let after = client.get_customer("acme-co").await.unwrap();
    assert_eq!(after.status, "deprovisioning");
    // Not necessarily the last entry: the final hour's submission may already have added AWS's answer.
    let entry = after.history.iter().find(|h| h.event_id.as_deref() == Some("2e72b7e1-0000-4f77-9e57-5a8bd2f7e1e5"));
    assert_eq!(entry.map(|h| (h.status.as_str(), h.applied)), Some(("deprovisioning", true)), "{:?}", after.history);
    let refused = client.record_usage(Usage::new("acme-co", "api_calls", 1u32)).await.unwrap_err();
    assert_eq!(refused.code(), "CUSTOMER_NOT_ACTIVE", "{refused:?}");
    assert!(client.remove_customer("acme-co").await.unwrap());
    assert!(!client.remove_customer("acme-co").await.unwrap());
}

#[tokio::test]
async fn report_stream_against_the_real_agent() {
    use meterd_proto::sdk::{ReportItem, ReportQuery};
    let agent = start_agent();
    let client = Client::connect(&agent.target, ClientOptions::default()).await.unwrap();
    for (who, dim, q) in [("acme", "api_calls", "2.5"), ("beta", "api_calls", "1"), ("acme", "storage_gb_hours", "3")] {
        client.record_usage(Usage::new(who, dim, q)).await.unwrap();
    }
    // The summary: one group per hour × product × dimension, then the trailer.
    let mut stream = client.report_stream(ReportQuery::default()).await.unwrap();
    let mut groups = Vec::new();
    let trailer = loop {
        match stream.next().await.unwrap().expect("a trailer before the end") {
            ReportItem::Group(g) => groups.push(g),
            ReportItem::Trailer(t) => break t,
            ReportItem::Row(r) => panic!("a row in a summary: {r:?}"),
        }
    };
    assert!(stream.next().await.unwrap().is_none(), "nothing after the trailer");
    groups.sort_by(|a, b| a.dimension.cmp(&b.dimension));
    assert_eq!(
        groups.iter().map(|g| (g.dimension.as_str(), g.customers)).collect::<Vec<_>>(),
        [("api_calls", 2), ("storage_gb_hours", 1)]
    );
    assert_eq!(groups[0].recorded, "3.5");
    let totals = trailer.totals.unwrap();
    assert!(totals.reconciled && totals.recorded == "6.5" && trailer.consistent);
    // Rows, filtered: what was sent is in `selected`; the totals stay the whole ledger's.
    let query = ReportQuery { rows: true, dimension: Some("api_calls".into()), ..Default::default() };
    let mut stream = client.report_stream(query).await.unwrap();
    let mut rows = Vec::new();
    while let Some(item) = stream.next().await.unwrap() {
        match item {
            ReportItem::Row(r) => rows.push(r),
            ReportItem::Trailer(t) => {
                assert_eq!((t.rows_sent, t.selected.unwrap().recorded), (2, "3.5".to_string()));
                assert_eq!(t.totals.unwrap().recorded, "6.5");
            }
            ReportItem::Group(g) => panic!("a group in a row stream: {g:?}"),
        }
    }
    assert_eq!(rows.len(), 2);
    let bad = ReportQuery { state: Some("pending".into()), ..Default::default() };
    let err = client.report_stream(bad).await.unwrap_err();
    assert_eq!((err.code(), err.field()), ("INVALID_USAGE", Some("state")), "{err}");
}
