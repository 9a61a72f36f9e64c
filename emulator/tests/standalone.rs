//! The standalone entry point `meterd emulator` uses: config file, announcement line, SDK traffic, shutdown.

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_marketplacemetering::config::retry::RetryConfig;
use aws_sdk_marketplacemetering::types::UsageRecordResultStatus as Status;
use common::*;

/// Forwards each written line to the test.
struct Lines(mpsc::Sender<String>, Vec<u8>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        while let Some(i) = self.1.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.1.drain(..=i).collect();
            let _ = self.0.send(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const CONFIG: &str = r#"
seed = 3
rate_limit_per_sec = 10

[[products]]
product_code = "prod-standalone"
dimensions = ["requests"]

[[customers]]
product_code = "prod-standalone"
aws_account_id = "123456789012"
license_arn = "arn:aws:license-manager::123456789012:license:l-standalone0001"

[[registration_tokens]]
token = "tok-1"
product_code = "prod-standalone"
aws_account_id = "123456789012"
license_arn = "arn:aws:license-manager::123456789012:license:l-standalone0001"
agreement_id = "agmt-standalone"
"#;

#[tokio::test]
async fn serves_a_config_file_on_an_ephemeral_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emulator.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        meterd_emulator::serve_standalone("127.0.0.1:0".parse().unwrap(), Some(&path), Lines(tx, Vec::new()), async {
            let _ = stop_rx.await;
        })
        .await
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await.unwrap().unwrap();
    let url = line.strip_prefix("meterd-emulator listening on ").expect("the announcement line").to_string();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{line}");

    // The service clock is real time here.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let hour = now - now % 3600;
    let c = client(&url, RetryConfig::disabled());
    let resolved = c.resolve_customer().registration_token("tok-1").send().await.unwrap();
    let r = rec_for(resolved.customer_aws_account_id().unwrap(), resolved.license_arn().unwrap(), "requests", 5, hour);
    let out = bmu(&c, vec![r]).await.unwrap();
    assert_eq!(statuses(&out), vec![Status::Success]);
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let totals = inspect_get(addr, "/_emulator/totals").await;
    assert_eq!(totals[0]["quantity"], "5");
    assert_eq!(totals[0]["product_code"], "prod-standalone");

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "stopped listening");
}

#[tokio::test]
async fn a_bad_config_file_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[products]]\nproduct_code = \"p\"\ndimensions = [\"d\", \"d\"]\n").unwrap();
    let err = meterd_emulator::serve_standalone("127.0.0.1:0".parse().unwrap(), Some(&path), Vec::new(), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("products[0].dimensions"), "{err}");
    let missing = dir.path().join("missing.toml");
    let err = meterd_emulator::serve_standalone("127.0.0.1:0".parse().unwrap(), Some(&missing), Vec::new(), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test]
async fn without_a_config_it_serves_the_demo_catalog() {
    let mut out = Vec::new();
    meterd_emulator::serve_standalone("127.0.0.1:0".parse().unwrap(), None, &mut out, async {}).await.unwrap();
    let line = String::from_utf8(out).unwrap();
    assert!(line.starts_with("meterd-emulator listening on http://127.0.0.1:") && line.ends_with('\n'));
    assert_eq!(line.lines().count(), 1);
}

#[test]
fn the_readme_example_config_is_valid() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n").expect("README has a TOML example") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    meterd_emulator::EmulatorConfig::from_toml_str(&readme[start..end]).unwrap();
}
