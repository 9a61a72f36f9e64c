//! `NativeClient`: one `meterd_proto::sdk::Client`, its calls as Promises.

use std::sync::Mutex;
use std::time::Duration;

use meterd_proto::sdk::{self, ClientOptions, RetryPolicy};
use napi::Env;
use napi::bindgen_prelude::{Float64ArraySlice, PromiseRaw, Utf16String, within_runtime_if_available};
use napi_derive::napi;

use crate::admin::{NativeFlush, NativeReport, NativeStatus};
use crate::customers::{NativeCustomerInfo, NativeEventOutcome, NativeIdentity, identity_from_js};
use crate::error::to_js;
use crate::packed::{self, NativePackedResults};
use crate::report::{self, NativeReportQuery, NativeReportStream};
use crate::usage::{NativeReceipt, NativeUsage, from_js};

/// Options as `index.js` passes them (seconds as numbers, already defaulted).
#[napi(object)]
pub struct NativeOptions {
    pub timeout_ms: f64,
    pub connect_timeout_ms: f64,
    pub max_attempts: u32,
    pub product: Option<String>,
    pub max_batch_events: u32,
}

#[napi]
pub struct NativeClient {
    target: String,
    options: ClientOptions,
    conn: Mutex<Option<sdk::Client>>,
}

fn duration(name: &str, ms: f64) -> napi::Result<Duration> {
    if ms.is_finite() && ms > 0.0 && ms < 1e12 {
        Ok(Duration::from_secs_f64(ms / 1000.0))
    } else {
        Err(napi::Error::from_reason(format!("{name} must be a positive number of milliseconds, not {ms}")))
    }
}

#[napi]
impl NativeClient {
    #[napi(constructor)]
    pub fn new(target: String, options: NativeOptions) -> napi::Result<Self> {
        let options = ClientOptions {
            timeout: duration("timeoutMs", options.timeout_ms)?,
            connect_timeout: duration("connectTimeoutMs", options.connect_timeout_ms)?,
            retry: RetryPolicy { max_attempts: options.max_attempts.max(1), ..RetryPolicy::default() },
            default_product: options.product,
            max_batch_events: options.max_batch_events.max(1) as usize,
        };
        let client = NativeClient { target, options, conn: Mutex::new(None) };
        client.client()?; // a malformed target fails here, not on the first call
        Ok(client)
    }

    /// The connection, opened lazily (again after `close()`).
    fn client(&self) -> napi::Result<sdk::Client> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = within_runtime_if_available(|| sdk::Client::new(&self.target, self.options.clone())).map_err(to_js)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    #[napi]
    pub async fn record_usage(&self, usage: NativeUsage) -> napi::Result<NativeReceipt> {
        let client = self.client()?;
        client.record_usage(from_js(usage)).await.map(Into::into).map_err(to_js)
    }

    /// `recordUsageBatch`, packed both ways (`packed.rs`): the events are read here on the JS thread, then the
    /// call runs on napi's tokio runtime like the `async fn`s.
    #[napi(ts_return_type = "Promise<NativePackedResults>")]
    pub fn record_usage_batch_packed<'env>(
        &self,
        env: &'env Env,
        text: Utf16String,
        nums: Float64ArraySlice,
    ) -> napi::Result<PromiseRaw<'env, NativePackedResults>> {
        let usages = packed::usages(&text, &nums)?;
        let client = self.client()?;
        env.spawn_future(async move {
            let results = client.record_usage_batch(&usages).await.map_err(to_js)?;
            Ok(packed::results(results))
        })
    }

    #[napi]
    pub async fn status(&self) -> napi::Result<NativeStatus> {
        self.client()?.status().await.map(Into::into).map_err(to_js)
    }

    #[napi]
    pub async fn flush(&self) -> napi::Result<NativeFlush> {
        self.client()?.flush().await.map(Into::into).map_err(to_js)
    }

    #[napi]
    pub async fn report(&self) -> napi::Result<NativeReport> {
        self.client()?.report().await.map(Into::into).map_err(to_js)
    }

    #[napi]
    pub async fn report_stream(&self, query: NativeReportQuery) -> napi::Result<NativeReportStream> {
        let stream = self.client()?.report_stream(report::query(query)).await.map_err(to_js)?;
        Ok(NativeReportStream::new(stream))
    }

    #[napi]
    pub async fn put_customer(
        &self,
        tenant_id: String,
        customer: NativeIdentity,
        product: Option<String>,
        agreement_id: Option<String>,
    ) -> napi::Result<NativeCustomerInfo> {
        let client = self.client()?;
        let customer = identity_from_js(customer);
        client
            .put_customer(&tenant_id, customer, product.as_deref(), agreement_id.as_deref())
            .await
            .map(Into::into)
            .map_err(to_js)
    }

    #[napi]
    pub async fn get_customer(&self, tenant_id: String) -> napi::Result<NativeCustomerInfo> {
        self.client()?.get_customer(&tenant_id).await.map(Into::into).map_err(to_js)
    }

    #[napi]
    pub async fn list_customers(&self) -> napi::Result<Vec<NativeCustomerInfo>> {
        let all = self.client()?.list_customers().await.map_err(to_js)?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    #[napi]
    pub async fn remove_customer(&self, tenant_id: String) -> napi::Result<bool> {
        self.client()?.remove_customer(&tenant_id).await.map_err(to_js)
    }

    #[napi]
    pub async fn resolve_customer(
        &self,
        registration_token: String,
        tenant_id: String,
        product: Option<String>,
    ) -> napi::Result<NativeCustomerInfo> {
        let client = self.client()?;
        client
            .resolve_customer(&registration_token, &tenant_id, product.as_deref())
            .await
            .map(Into::into)
            .map_err(to_js)
    }

    #[napi]
    pub async fn apply_event(&self, event_json: String) -> napi::Result<NativeEventOutcome> {
        self.client()?.apply_event(&event_json).await.map(Into::into).map_err(to_js)
    }

    /// Drops the connection; a later call opens a new one.
    #[napi]
    pub fn close(&self) {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
