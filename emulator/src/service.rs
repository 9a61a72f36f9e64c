//! The emulated service: its mutable state and the three operations. Everything here runs under one lock and
//! never awaits, so each call sees and leaves a consistent ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::clock::{Clock, epoch_millis, hour_start_ms};
use crate::config::{EmuCustomer, EmuToken, EmulatorConfig, Faults};
use crate::counters::Counters;
use crate::decimal::Quantity;
use crate::faults::{CallFaults, FaultRng, RateLimitMode, RateLimiter};
use crate::ledger::{DedupKey, Fingerprint, Ledger, LedgerEntry, Lookup, ledger_allocations};
use crate::requests::RequestLog;
use crate::rules::{self, Identity, LicenseInfo, QtyKind};
use crate::wire::{self, AwsError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    BatchMeterUsage,
    MeterUsage,
    ResolveCustomer,
    RegisterUsage,
    Unknown(String),
}

impl Operation {
    pub fn from_target(target: Option<&str>) -> Self {
        match target.and_then(|t| t.strip_prefix(wire::TARGET_PREFIX)) {
            Some("BatchMeterUsage") => Self::BatchMeterUsage,
            Some("MeterUsage") => Self::MeterUsage,
            Some("ResolveCustomer") => Self::ResolveCustomer,
            Some("RegisterUsage") => Self::RegisterUsage,
            _ => Self::Unknown(target.unwrap_or("").to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::BatchMeterUsage => "BatchMeterUsage",
            Self::MeterUsage => "MeterUsage",
            Self::ResolveCustomer => "ResolveCustomer",
            Self::RegisterUsage => "RegisterUsage",
            Self::Unknown(t) if t.is_empty() => "(no X-Amz-Target)",
            Self::Unknown(t) => t,
        }
    }
}

/// MeterUsage parameters compared for `ClientToken` reuse: everything but the token, quantities by value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TokenParams {
    product: String,
    timestamp_ms: Option<i64>,
    dimension: String,
    quantity: Quantity,
    kind: QtyKind,
    dry_run: bool,
    allocations: Vec<(Option<Quantity>, TagPairs)>,
}

type TagPairs = Vec<(Option<String>, Option<String>)>;

pub(crate) struct State {
    pub clock_offset_secs: i64,
    pub faults: Faults,
    pub rate_limit_per_sec: f64,
    rate_limit_mode: RateLimitMode,
    batch_bucket: RateLimiter,
    meter_bucket: RateLimiter,
    rng: FaultRng,
    products: BTreeMap<String, BTreeSet<String>>,
    pub customers: BTreeSet<EmuCustomer>,
    /// Every license ever known (config, tokens, added customers): removing a customer unsubscribes it but its
    /// license still names a product, as a cancelled agreement's license does.
    licenses: HashMap<String, LicenseInfo>,
    /// Every (product, CustomerIdentifier) ever known, likewise: an identifier that never existed is
    /// `InvalidCustomerIdentifierException`, one whose subscription ended is `CustomerNotSubscribed`.
    legacy_customers: HashSet<(String, String)>,
    tokens: HashMap<String, EmuToken>,
    /// Agreement id → status, for DescribeAgreement.
    pub agreements: BTreeMap<String, String>,
    pub ledger: Ledger,
    pub counters: Counters,
    pub requests: RequestLog,
    pub cloudtrail: crate::cloudtrail::CloudTrailLog,
    client_tokens: HashMap<String, (TokenParams, Result<String, AwsError>)>,
    /// RegisterUsage: whether this host is a container platform, and the products its buyer is not entitled to.
    pub container_platform: bool,
    pub not_entitled: BTreeSet<String>,
}

impl State {
    fn from_config(cfg: &EmulatorConfig) -> Self {
        let mut st = Self {
            clock_offset_secs: cfg.clock_offset_secs,
            faults: cfg.faults.clone(),
            rate_limit_per_sec: cfg.rate_limit_per_sec,
            rate_limit_mode: cfg.rate_limit_mode,
            batch_bucket: RateLimiter::new(cfg.rate_limit_mode, cfg.rate_limit_per_sec),
            meter_bucket: RateLimiter::new(cfg.rate_limit_mode, cfg.rate_limit_per_sec),
            rng: FaultRng::new(cfg.seed),
            products: cfg
                .products
                .iter()
                .map(|p| (p.product_code.clone(), p.dimensions.iter().cloned().collect()))
                .collect(),
            customers: BTreeSet::new(),
            licenses: HashMap::new(),
            legacy_customers: HashSet::new(),
            tokens: cfg.registration_tokens.iter().map(|t| (t.token.clone(), t.clone())).collect(),
            agreements: cfg
                .registration_tokens
                .iter()
                .filter_map(|t| t.agreement_id.clone())
                .map(|a| (a, "ACTIVE".to_string()))
                .collect(),
            ledger: Ledger::default(),
            counters: Counters::default(),
            requests: RequestLog::default(),
            cloudtrail: Default::default(),
            client_tokens: HashMap::new(),
            container_platform: cfg.container_platform,
            not_entitled: cfg.not_entitled.iter().cloned().collect(),
        };
        for t in &cfg.registration_tokens {
            st.learn_license(&t.customer());
            if t.subscribed {
                st.customers.insert(t.customer());
            }
        }
        for c in &cfg.customers {
            st.add_customer(c.clone());
        }
        st
    }

    fn learn_license(&mut self, c: &EmuCustomer) {
        if let (Some(l), Some(a)) = (&c.license_arn, &c.aws_account_id) {
            self.licenses
                .entry(l.clone())
                .or_insert_with(|| LicenseInfo { product: c.product_code.clone(), account: a.clone() });
        }
        if let Some(id) = &c.customer_identifier {
            self.legacy_customers.insert((c.product_code.clone(), id.clone()));
        }
    }

    pub fn add_customer(&mut self, c: EmuCustomer) {
        self.learn_license(&c);
        self.customers.insert(c);
    }

    pub fn remove_customers(&mut self, pattern: &EmuCustomer) -> usize {
        let before = self.customers.len();
        self.customers.retain(|c| !c.matches(pattern));
        before - self.customers.len()
    }

    pub fn has_product(&self, code: &str) -> bool {
        self.products.contains_key(code)
    }

    pub fn set_rate_limit(&mut self, per_sec: f64) {
        self.rate_limit_per_sec = per_sec;
        self.batch_bucket = RateLimiter::new(self.rate_limit_mode, per_sec);
        self.meter_bucket = RateLimiter::new(self.rate_limit_mode, per_sec);
    }

    fn is_subscribed(&self, id: &Identity) -> bool {
        if matches!(id, Identity::Instance { .. }) {
            return true;
        }
        self.customers.iter().any(|c| match id {
            Identity::License { license_arn, account } => {
                c.license_arn.as_ref() == Some(license_arn) && c.aws_account_id.as_ref() == Some(account)
            }
            Identity::ProductCustomer { product, customer_identifier } => {
                &c.product_code == product && c.customer_identifier.as_ref() == Some(customer_identifier)
            }
            Identity::ProductAccount { product, account } => {
                &c.product_code == product && c.aws_account_id.as_ref() == Some(account)
            }
            Identity::Instance { .. } => false,
        })
    }

    fn product_of(&self, id: &Identity) -> String {
        match id {
            Identity::License { license_arn, .. } => {
                self.licenses.get(license_arn).map(|i| i.product.clone()).unwrap_or_default()
            }
            Identity::ProductCustomer { product, .. }
            | Identity::ProductAccount { product, .. }
            | Identity::Instance { product } => product.clone(),
        }
    }
}

pub(crate) struct Shared {
    pub initial: EmulatorConfig,
    pub clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Signs RegisterUsage answers; kept across `reset` so a served public key stays valid.
    pub signer: crate::register::Signer,
    /// The emulated instance metadata service's log (kept across `reset`).
    pub imds: crate::imds::Imds,
}

/// The decisions taken for one call before its body is looked at.
pub(crate) enum Admission {
    Drop,
    Refuse(AwsError),
    Proceed { drop_response: bool },
}

impl Shared {
    pub fn new(config: EmulatorConfig, clock: Arc<dyn Clock>) -> Self {
        let state = Mutex::new(State::from_config(&config));
        let signer = crate::register::Signer::new(epoch_millis(clock.now()).div_euclid(1000));
        Self { initial: config, clock, state, signer, imds: Default::default() }
    }

    /// A poisoned lock only means another call panicked mid-way; the state itself is still usable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn reset(&self) {
        *self.lock() = State::from_config(&self.initial);
    }

    pub fn now_ms(&self, st: &State) -> i64 {
        epoch_millis(self.clock.now()).saturating_add(st.clock_offset_secs.saturating_mul(1000))
    }

    /// Counts the call and applies the per-call faults and the rate limit, in a fixed order.
    pub fn admit(&self, op: &Operation) -> (Admission, u64) {
        let mut st = self.lock();
        *st.counters.calls.entry(op.name().to_string()).or_default() += 1;
        let faults = st.faults.clone();
        let latency = faults.latency_ms;
        let CallFaults { drop_connection, throttle, internal_error, drop_response } = st.rng.call(&faults);
        if drop_connection {
            st.counters.injected.dropped_connections += 1;
            return (Admission::Drop, 0);
        }
        let within_rate = match op {
            Operation::BatchMeterUsage => st.batch_bucket.try_take(),
            Operation::MeterUsage => st.meter_bucket.try_take(),
            _ => true,
        };
        if latency > 0 {
            st.counters.injected.delayed += 1;
        }
        if !within_rate {
            st.counters.rate_limited += 1;
            return (Admission::Refuse(AwsError::throttling()), latency);
        }
        if throttle {
            st.counters.injected.throttling += 1;
            return (Admission::Refuse(AwsError::throttling()), latency);
        }
        if internal_error {
            st.counters.injected.internal_errors += 1;
            return (Admission::Refuse(AwsError::internal()), latency);
        }
        if drop_response {
            st.counters.injected.dropped_responses += 1;
        }
        (Admission::Proceed { drop_response }, latency)
    }

    /// Runs one operation on a decoded body.
    pub fn call(&self, op: &Operation, body: &[u8], request_id: &str) -> Result<Value, AwsError> {
        let mut st = self.lock();
        let result = if body.len() >= rules::MAX_BODY_BYTES {
            Err(AwsError::validation(vec![format!(
                "Request of {} bytes failed to satisfy constraint: Request size must be less than 1 MB ({} bytes)",
                body.len(),
                rules::MAX_BODY_BYTES
            )]))
        } else {
            wire::parse_body(body).and_then(|m| match op {
                Operation::BatchMeterUsage => self.batch_meter_usage(&mut st, &m, request_id),
                Operation::MeterUsage => self.meter_usage(&mut st, &m, request_id),
                Operation::ResolveCustomer => resolve_customer(&st, &m),
                Operation::RegisterUsage => {
                    let product = m.get("ProductCode").and_then(Value::as_str).unwrap_or_default();
                    let host = crate::register::Host {
                        container_platform: st.container_platform,
                        product_known: st.products.contains_key(product),
                        entitled: !st.not_entitled.contains(product),
                        signer: &self.signer,
                        now_secs: self.now_ms(&st).div_euclid(1000),
                    };
                    crate::register::register_usage(&m, &host)
                }
                Operation::Unknown(t) => Err(AwsError::client(
                    "UnknownOperationException",
                    format!("Unknown operation: X-Amz-Target '{t}' (expected {}<Operation>)", wire::TARGET_PREFIX),
                )),
            })
        };
        if let Err(e) = &result
            && e.status.is_client_error()
            && e.code != "ThrottlingException"
            && e.code != "DryRunOperation"
        {
            *st.counters.rejections.entry(e.code.to_string()).or_default() += 1;
        }
        st.requests.push(op.name(), request_id, body, result.as_ref().err().map(|e| e.code));
        if matches!(op, Operation::BatchMeterUsage | Operation::MeterUsage) {
            let now = self.now_ms(&st);
            let answer = result.as_ref().map_err(|e| (e.code, e.message.as_str()));
            st.cloudtrail.push(op.name(), request_id, now, body, answer);
        }
        result
    }

    fn batch_meter_usage(&self, st: &mut State, m: &Map<String, Value>, request_id: &str) -> Result<Value, AwsError> {
        let now_ms = self.now_ms(st);
        let input = wire::batch_meter_usage_input(m)?;
        let (product_code, records) = rules::batch_shape(input, self.initial.strict_wire)?;
        let batch =
            rules::batch_identity(product_code.as_deref(), &records, &st.products, &st.licenses, &st.legacy_customers)?;
        let allocations = rules::batch_allocations(&records)?;
        if let Some(p) = &batch.product
            && let Some(dims) = st.products.get(p)
        {
            for r in &records {
                rules::dimension_check(p, dims, &r.dimension)?;
            }
        }
        let window_ms = secs_to_ms(self.initial.submission_window_secs);
        for r in &records {
            rules::timestamp_check(r.timestamp_ms, r.timestamp_secs, now_ms, window_ms, true)?;
        }

        st.counters.records_received += records.len() as u64;
        let mut results = Vec::with_capacity(records.len());
        let mut unprocessed = Vec::new();
        for ((r, identity), allocs) in records.into_iter().zip(batch.identities).zip(allocations) {
            let faults = st.faults.clone();
            if st.rng.unprocessed(&faults) {
                st.counters.injected.unprocessed_records += 1;
                unprocessed.push(Value::Object(r.echo));
                continue;
            }
            let hour = hour_start_ms(r.timestamp_ms.unwrap_or_default());
            let key = DedupKey { identity: identity.clone(), dimension: r.dimension.clone(), hour_start_ms: hour };
            let fp = Fingerprint { quantity: r.quantity, allocations: allocs };
            let lookup = st.ledger.lookup(&key, &fp);
            // An identical resend of a billed record is idempotent even after the customer unsubscribed: the
            // first answer was Success and the usage is billed, so the resend must not contradict it.
            if !matches!(lookup, Lookup::Same { .. }) && !st.is_subscribed(&identity) {
                st.counters.not_subscribed += 1;
                results.push(json!({ "UsageRecord": r.echo, "Status": "CustomerNotSubscribed" }));
                continue;
            }
            match lookup {
                Lookup::Fresh => {
                    let id = st.rng.record_id();
                    let entry = self.entry(
                        st,
                        "BatchMeterUsage",
                        &identity,
                        &r.dimension,
                        hour,
                        r.timestamp_secs,
                        &fp,
                        &id,
                        request_id,
                    );
                    st.ledger.insert(key, fp, entry);
                    st.counters.records_accepted += 1;
                    results.push(json!({ "UsageRecord": r.echo, "MeteringRecordId": id, "Status": "Success" }));
                }
                Lookup::Same { id, other_allocations } => {
                    st.counters.records_replayed += 1;
                    if other_allocations {
                        st.counters.replayed_with_other_allocations += 1;
                    }
                    results.push(json!({ "UsageRecord": r.echo, "MeteringRecordId": id, "Status": "Success" }));
                }
                Lookup::Conflict => {
                    st.counters.duplicates += 1;
                    results.push(json!({ "UsageRecord": r.echo, "Status": "DuplicateRecord" }));
                }
            }
        }
        Ok(json!({ "Results": results, "UnprocessedRecords": unprocessed }))
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        st: &State,
        operation: &str,
        identity: &Identity,
        dimension: &str,
        hour_ms: i64,
        timestamp: f64,
        fp: &Fingerprint,
        id: &str,
        request_id: &str,
    ) -> LedgerEntry {
        let (account, license, customer) = match identity {
            Identity::License { license_arn, account } => (Some(account.clone()), Some(license_arn.clone()), None),
            Identity::ProductCustomer { customer_identifier, .. } => (None, None, Some(customer_identifier.clone())),
            Identity::ProductAccount { account, .. } => (Some(account.clone()), None, None),
            Identity::Instance { .. } => (None, None, None),
        };
        LedgerEntry {
            metering_record_id: id.to_string(),
            operation: operation.to_string(),
            product_code: st.product_of(identity),
            customer_aws_account_id: account,
            license_arn: license,
            customer_identifier: customer,
            dimension: dimension.to_string(),
            hour_start: hour_ms.div_euclid(1000),
            timestamp,
            quantity: fp.quantity.to_string(),
            allocations: ledger_allocations(&fp.allocations),
            accepted_at: self.now_ms(st).div_euclid(1000),
            request_id: request_id.to_string(),
        }
    }

    fn meter_usage(&self, st: &mut State, m: &Map<String, Value>, request_id: &str) -> Result<Value, AwsError> {
        let now_ms = self.now_ms(st);
        let req = rules::meter_usage_shape(wire::meter_usage_input(m)?)?;
        let params = TokenParams {
            product: req.product.clone(),
            timestamp_ms: req.timestamp_ms,
            dimension: req.dimension.clone(),
            quantity: req.quantity,
            kind: req.kind,
            dry_run: req.dry_run,
            allocations: req
                .raw_allocations
                .iter()
                .flatten()
                .map(|a| {
                    let q = match (a.quantity, &a.quantity_as_decimal) {
                        (Some(q), None) => u64::try_from(q).ok().map(Quantity::from_units),
                        (None, Some(d)) => Quantity::parse_model_decimal(d),
                        _ => None,
                    };
                    let mut tags: Vec<_> = a.tags.iter().flatten().map(|t| (t.key.clone(), t.value.clone())).collect();
                    tags.sort();
                    (q, tags)
                })
                .collect(),
        };
        if let Some(token) = &req.client_token
            && let Some((first, result)) = st.client_tokens.get(token)
        {
            if *first != params {
                return Err(AwsError::new(
                    StatusCode::CONFLICT,
                    "IdempotencyConflictException",
                    format!("ClientToken {token} was already used with different parameters"),
                ));
            }
            let result = result.clone();
            if result.is_ok() {
                st.counters.records_replayed += 1;
            }
            return result.map(|id| json!({ "MeteringRecordId": id }));
        }
        let Some(dims) = st.products.get(&req.product) else {
            return Err(AwsError::client(
                "InvalidProductCodeException",
                format!("The product code {} does not match a product published by this seller", req.product),
            ));
        };
        let allocs = rules::meter_usage_allocations(&req)?;
        rules::dimension_check(&req.product, dims, &req.dimension)?;
        let window_ms = secs_to_ms(self.initial.meter_usage_window_secs);
        rules::timestamp_check(req.timestamp_ms, req.timestamp_secs, now_ms, window_ms, false)?;
        if st.not_entitled.contains(&req.product) {
            return Err(AwsError::client(
                "CustomerNotEntitledException",
                format!("The account running this software is not entitled to product {}", req.product),
            ));
        }
        if req.dry_run {
            return Err(AwsError::new(
                StatusCode::PRECONDITION_FAILED,
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
            ));
        }
        let identity = Identity::Instance { product: req.product.clone() };
        let hour = hour_start_ms(req.timestamp_ms.unwrap_or_default());
        let key = DedupKey { identity: identity.clone(), dimension: req.dimension.clone(), hour_start_ms: hour };
        let fp = Fingerprint { quantity: req.quantity, allocations: allocs };
        let result = match st.ledger.lookup(&key, &fp) {
            Lookup::Fresh => {
                let id = st.rng.record_id();
                let entry = self.entry(
                    st,
                    "MeterUsage",
                    &identity,
                    &req.dimension,
                    hour,
                    req.timestamp_secs,
                    &fp,
                    &id,
                    request_id,
                );
                st.ledger.insert(key, fp, entry);
                st.counters.records_accepted += 1;
                Ok(id)
            }
            Lookup::Same { id, other_allocations } => {
                st.counters.records_replayed += 1;
                if other_allocations {
                    st.counters.replayed_with_other_allocations += 1;
                }
                Ok(id)
            }
            Lookup::Conflict => {
                st.counters.duplicates += 1;
                Err(AwsError::client(
                    "DuplicateRequestException",
                    format!(
                        "Usage for dimension {} in the hour of this timestamp was already metered with a different quantity",
                        req.dimension
                    ),
                ))
            }
        };
        if let Some(token) = req.client_token {
            st.client_tokens.insert(token, (params, result.clone()));
        }
        result.map(|id| json!({ "MeteringRecordId": id }))
    }
}

fn resolve_customer(st: &State, m: &Map<String, Value>) -> Result<Value, AwsError> {
    let input = wire::resolve_customer_input(m)?;
    let Some(token) = input.registration_token else {
        return Err(AwsError::validation(vec![
            "Value null at 'registrationToken' failed to satisfy constraint: Member must not be null".into(),
        ]));
    };
    if token.is_empty() {
        return Err(AwsError::validation(vec![
            "Value '' at 'registrationToken' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\s\\S]+"
                .into(),
        ]));
    }
    let Some(t) = st.tokens.get(&token) else {
        return Err(AwsError::client("InvalidTokenException", "Registration token is invalid"));
    };
    if t.expired {
        return Err(AwsError::client("ExpiredTokenException", "Registration token has expired"));
    }
    let mut out = Map::new();
    out.insert("ProductCode".into(), Value::String(t.product_code.clone()));
    if let Some(c) = &t.customer_identifier {
        out.insert("CustomerIdentifier".into(), Value::String(c.clone()));
    }
    if let Some(a) = &t.aws_account_id {
        out.insert("CustomerAWSAccountId".into(), Value::String(a.clone()));
    }
    if let Some(l) = &t.license_arn {
        out.insert("LicenseArn".into(), Value::String(l.clone()));
    }
    if let Some(g) = &t.agreement_id {
        out.insert("Metadata".into(), json!({ "AgreementId": g }));
    }
    Ok(Value::Object(out))
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}
