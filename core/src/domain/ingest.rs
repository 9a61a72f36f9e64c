//! The ingest decision: what happens to one validated event, given what the ledger already holds.
//!
//! Pure: the store is asked only through [`Lookups`] (a point read per key, mapping, customer and bucket), and the
//! answer is a list of writes ([`GroupWrites`]) that the store must apply atomically. Every backend (sled today, a
//! shared database for fleets) therefore decides exactly alike: replay vs conflict, the lateness bound, tenant
//! mapping, the lifecycle gate, the late-usage policy and the bucket arithmetic all live here.

use std::collections::HashMap;
use std::hash::BuildHasher;

use super::catalog::{LatePolicy, Limits};
use super::customer::{CustomerStatus, TenantMapping};
use super::event::{Bucket, BucketKey, BucketKeyRef, Identity, Receipt, StoredEvent, UsageEvent};
use super::quantity::Overflow;
use super::validate::FieldError;
use crate::clock::{UnixMillis, hour_start};

/// What happened to one event of an ingest call: the one type that travels from the domain to the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Newly stored.
    Stored(Receipt),
    /// The key was already stored with the same content; this is the original receipt.
    Replayed(Receipt),
    /// A field broke a rule; nothing was stored.
    Invalid(FieldError),
    /// The key was already stored with different content; nothing was changed.
    Conflict { existing: Receipt },
    /// The bucket total would overflow; nothing was stored. (Needs ~10^25 units in one hour.)
    Overflow,
    /// The event's hour is already sealed and the late-usage policy is "reject"; nothing was stored.
    LateRejected { hour_ms: UnixMillis },
    /// The event's timestamp is older than the lateness bound: too late to bill for its own period.
    TooLate { event_time_ms: UnixMillis, max_lateness_ms: i64 },
    /// The customer may not be metered any more, or the tenant maps to another product.
    NotActive(Inactive),
}

/// Why a customer's usage is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inactive {
    /// The tenant is mapped to another product's identity.
    MappedElsewhere { tenant: String, mapped_product: String, product: String },
    /// The customer is deprovisioning or ended.
    Status(CustomerStatus),
    /// The license is bound (by its License event or a tenant mapping) to another account than the event names.
    OtherAccount { license_arn: String, bound_account: String, account_id: String },
}

/// The class of a refusal: the edge picks its status code from it, metrics their reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    Invalid,
    Conflict,
    Overflow,
    Late,
    NotActive,
}

impl IngestOutcome {
    pub fn receipt(&self) -> Option<&Receipt> {
        match self {
            IngestOutcome::Stored(r) | IngestOutcome::Replayed(r) => Some(r),
            _ => None,
        }
    }

    /// For a refused event: its class and the field and message to show the caller (the field relative to the
    /// event, as in [`FieldError`]). None for a stored or replayed event.
    pub fn refusal(&self) -> Option<(RefusalKind, FieldError)> {
        let e = |field: &str, message: String| FieldError { field: field.to_string(), message };
        Some(match self {
            IngestOutcome::Stored(_) | IngestOutcome::Replayed(_) => return None,
            IngestOutcome::Invalid(f) => (RefusalKind::Invalid, f.clone()),
            IngestOutcome::Conflict { existing } => (
                RefusalKind::Conflict,
                e(
                    "idempotency_key",
                    format!(
                        "{} was already used for a different event (recorded at {} for hour {} of product {:?}); \
                         a retry must resend identical content, a new event needs a new key",
                        super::echo::echo(&existing.idempotency_key),
                        crate::clock::rfc3339(existing.recorded_at_ms),
                        crate::clock::rfc3339(existing.hour_ms),
                        existing.product
                    ),
                ),
            ),
            IngestOutcome::LateRejected { hour_ms } => (
                RefusalKind::Late,
                e(
                    "timestamp",
                    format!(
                        "the hour {} is already sealed for submission and pipeline.late_usage is \"reject\"; \
                         late usage is not counted",
                        crate::clock::rfc3339(*hour_ms)
                    ),
                ),
            ),
            IngestOutcome::TooLate { event_time_ms, max_lateness_ms } => (
                RefusalKind::Late,
                e(
                    "timestamp",
                    format!(
                        "{} is older than pipeline.max_lateness ({}): usage that late is not billed \
                         (AWS refuses it, and counting it now would bill the wrong period)",
                        crate::clock::rfc3339(*event_time_ms),
                        humantime::format_duration(std::time::Duration::from_millis((*max_lateness_ms).max(0) as u64))
                    ),
                ),
            ),
            IngestOutcome::NotActive(Inactive::MappedElsewhere { tenant, mapped_product, product }) => (
                RefusalKind::NotActive,
                e("customer", format!("tenant {tenant:?} is mapped to product {mapped_product:?}, not {product:?}")),
            ),
            IngestOutcome::NotActive(Inactive::Status(st)) => (
                RefusalKind::NotActive,
                e(
                    "customer",
                    format!("the customer's subscription is {} ({st:?}); usage after the end is not billed", st.name()),
                ),
            ),
            IngestOutcome::NotActive(Inactive::OtherAccount { license_arn, bound_account, account_id }) => (
                RefusalKind::NotActive,
                e(
                    "customer",
                    format!(
                        "license {} belongs to CustomerAWSAccountId {} (from its License event or a tenant mapping), \
                         not {}: AWS would refuse this usage",
                        super::echo::echo(license_arn),
                        super::echo::echo(bound_account),
                        super::echo::echo(account_id)
                    ),
                ),
            ),
            IngestOutcome::Overflow => {
                (RefusalKind::Overflow, e("quantity", "the hourly total of this bucket would overflow".into()))
            }
        })
    }

    /// A bounded label for the refusal metric: fixed reasons, and for invalid events the field's root.
    pub fn refusal_reason(&self) -> Option<String> {
        Some(match self {
            IngestOutcome::Stored(_) | IngestOutcome::Replayed(_) => return None,
            IngestOutcome::Invalid(f) => {
                let root = f.field.split(['.', '[']).next().unwrap_or("event");
                format!("invalid_{}", if root.is_empty() { "event" } else { root })
            }
            IngestOutcome::Conflict { .. } => "conflict".into(),
            IngestOutcome::Overflow => "overflow".into(),
            IngestOutcome::LateRejected { .. } => "late_rejected".into(),
            IngestOutcome::TooLate { .. } => "too_late".into(),
            IngestOutcome::NotActive(_) => "not_active".into(),
        })
    }
}

/// Where an event's usage is counted: its own hour, or — when that hour is sealed — the open hour, as late.
/// `sealed_through`: every hour before it is sealed (None: nothing sealed yet).
pub fn place(
    event_time_ms: UnixMillis,
    received_ms: UnixMillis,
    sealed_through: Option<UnixMillis>,
    late: LatePolicy,
) -> Result<(UnixMillis, bool), IngestOutcome> {
    let hour_ms = hour_start(event_time_ms);
    match sealed_through {
        Some(sealed) if hour_ms < sealed => match late {
            LatePolicy::Reject => Err(IngestOutcome::LateRejected { hour_ms }),
            // Counted in the current open hour; never in a sealed one (its record is frozen).
            LatePolicy::Carry => Ok((hour_start(received_ms).max(sealed), true)),
        },
        _ => Ok((hour_ms, false)),
    }
}

/// The customer whose lifecycle gates an identity's usage (a license, or a legacy customer identifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerRef {
    License(String),
    Legacy(String),
}

impl CustomerRef {
    /// None for a tenant: it has no lifecycle of its own until mapped.
    pub fn of(identity: &Identity) -> Option<Self> {
        CustomerKey::of(identity).map(|k| k.to_owned_ref())
    }

    fn key(&self) -> CustomerKey<'_> {
        match self {
            CustomerRef::License(l) => CustomerKey::License(l),
            CustomerRef::Legacy(c) => CustomerKey::Legacy(c),
        }
    }
}

/// A [`CustomerRef`] borrowed from an identity: the group looks standings up with it without copying the ARN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CustomerKey<'a> {
    License(&'a str),
    Legacy(&'a str),
}

impl<'a> CustomerKey<'a> {
    fn of(identity: &'a Identity) -> Option<Self> {
        match identity {
            Identity::Aws { license_arn, .. } => Some(CustomerKey::License(license_arn)),
            Identity::Legacy { customer_identifier } => Some(CustomerKey::Legacy(customer_identifier)),
            // A deployment's buyer has no lifecycle meterd can see: AWS decides entitlement at each MeterUsage.
            Identity::Tenant(_) | Identity::Deployment => None,
        }
    }

    fn to_owned_ref(self) -> CustomerRef {
        match self {
            CustomerKey::License(l) => CustomerRef::License(l.to_string()),
            CustomerKey::Legacy(c) => CustomerRef::Legacy(c.to_string()),
        }
    }
}

// The owned and the borrowed form hash alike (one impl), so either finds the other in a map.
impl std::hash::Hash for CustomerKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (kind, s) = match self {
            CustomerKey::License(s) => (0u8, s),
            CustomerKey::Legacy(s) => (1u8, s),
        };
        kind.hash(state);
        s.hash(state);
    }
}

impl std::hash::Hash for CustomerRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl hashbrown::Equivalent<CustomerRef> for CustomerKey<'_> {
    fn equivalent(&self, key: &CustomerRef) -> bool {
        *self == key.key()
    }
}

/// What the lifecycle gate knows of a customer: its status, and for a license the account it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub status: CustomerStatus,
    /// The `CustomerAWSAccountId` of the license's lifecycle (its License event or a tenant mapping); None for a
    /// legacy customer.
    pub bound_account: Option<String>,
}

impl Standing {
    pub fn of(life: &super::customer::CustomerLifecycle) -> Self {
        // A License event without the account (and a legacy customer) binds none: "" is not an account.
        let bound_account = match &life.identity {
            Identity::Aws { account_id, .. } if !account_id.is_empty() => Some(account_id.clone()),
            _ => None,
        };
        Standing { status: life.status.clone(), bound_account }
    }
}

/// The reads an ingest decision needs, answered from the store as of the start of the group.
pub trait Lookups {
    type Error;
    fn event(&mut self, idempotency_key: &str) -> Result<Option<StoredEvent>, Self::Error>;
    fn mapping(&mut self, tenant_id: &str) -> Result<Option<TenantMapping>, Self::Error>;
    fn standing(&mut self, customer: &CustomerRef) -> Result<Option<Standing>, Self::Error>;
    fn bucket(&mut self, key: &BucketKey) -> Result<Option<Bucket>, Self::Error>;
}

/// The rules an ingest group is decided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestRules {
    pub late: LatePolicy,
    /// Events older than this before their arrival are refused (`pipeline.max_lateness`).
    pub max_lateness_ms: Option<i64>,
}

impl From<LatePolicy> for IngestRules {
    fn from(late: LatePolicy) -> Self {
        IngestRules { late, max_lateness_ms: None }
    }
}

impl From<&Limits> for IngestRules {
    fn from(l: &Limits) -> Self {
        IngestRules { late: l.late, max_lateness_ms: l.max_lateness_ms }
    }
}

/// What a decided group writes: new event keys and the buckets' new totals, applied in one atomic write.
#[derive(Debug, Default)]
pub struct GroupWrites {
    pub events: Vec<(String, StoredEvent)>,
    pub buckets: Vec<(BucketKey, Bucket)>,
    pub replays: u64,
    pub late_events: u64,
    /// Tenants whose usage was held for want of a mapping (for a warning).
    pub unmapped_tenants: Vec<String>,
}

/// The group's own maps: foldhash (seeded per process, several times faster than SipHash on these keys; a group
/// holds at most 16,384 events, so a caller who aimed collisions could only slow their own group).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// For the maps looked up with borrowed keys ([`BucketKeyRef`], [`CustomerKey`]): no copy per event.
type FastProbeMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// Decides the events of one group in order, each against the store plus what the group already decided (a key
/// claimed earlier in the group is a replay or a conflict; totals add up within the group).
#[derive(Default)]
pub struct IngestGroup {
    sealed_through: Option<UnixMillis>,
    /// Indexes into `events`, by the hash of their key: the key is kept once, in `events`.
    claimed: hashbrown::HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    events: Vec<(String, StoredEvent)>,
    buckets: FastProbeMap<BucketKey, Bucket>,
    mappings: FastMap<String, Option<TenantMapping>>,
    standings: FastProbeMap<CustomerRef, Option<Standing>>,
    replays: u64,
    late_events: u64,
    unmapped: Vec<String>,
}

impl IngestGroup {
    pub fn new(sealed_through: Option<UnixMillis>) -> Self {
        IngestGroup { sealed_through, ..IngestGroup::default() }
    }

    pub fn decide<L: Lookups>(
        &mut self,
        ev: &UsageEvent,
        received_ms: UnixMillis,
        rules: IngestRules,
        look: &mut L,
    ) -> Result<IngestOutcome, L::Error> {
        let key = ev.idempotency_key.as_str();
        let digest = ev.content_digest();
        let key_hash = self.hasher.hash_one(key);
        let events = &self.events;
        let existing = match self.claimed.find(key_hash, |&i| events[i].0 == key) {
            Some(&i) => Some(events[i].1.clone()),
            None => look.event(key)?,
        };
        if let Some(s) = existing {
            let receipt = Receipt::from_stored(key, &s, true);
            // A v1-layout digest (migrated entry) is recomputed in its own layout.
            return Ok(if s.digest == digest || ev.matches(&s.digest) {
                self.replays += 1;
                IngestOutcome::Replayed(receipt)
            } else {
                IngestOutcome::Conflict { existing: Receipt { replayed: false, ..receipt } }
            });
        }
        // After the replay check: a retry of an event stored while it was young enough still gets its receipt.
        // AWS would not take usage this old, and counting it in today's hour would bill the wrong period.
        if let (Some(t), Some(max)) = (ev.timestamp_ms, rules.max_lateness_ms)
            && t < received_ms.saturating_sub(max)
        {
            return Ok(IngestOutcome::TooLate { event_time_ms: t, max_lateness_ms: max });
        }

        // A mapped tenant is counted under its marketplace identity; an unmapped one is held.
        // Borrowed: copied only into a bucket key the group did not hold yet.
        let mut identity = std::borrow::Cow::Borrowed(&ev.identity);
        if let Identity::Tenant(t) = &ev.identity {
            let m = match self.mappings.get(t) {
                Some(m) => m.clone(),
                None => {
                    let m = look.mapping(t)?;
                    if m.is_none() {
                        self.unmapped.push(t.clone());
                    }
                    self.mappings.insert(t.clone(), m.clone());
                    m
                }
            };
            if let Some(m) = m {
                if m.product != ev.product {
                    return Ok(IngestOutcome::NotActive(Inactive::MappedElsewhere {
                        tenant: t.clone(),
                        mapped_product: m.product,
                        product: ev.product.clone(),
                    }));
                }
                identity = std::borrow::Cow::Owned(m.identity);
            }
        }
        if let Some(c) = CustomerKey::of(&identity) {
            let standing = match self.standings.get(&c) {
                Some(s) => s.clone(),
                None => {
                    let c = c.to_owned_ref();
                    let s = look.standing(&c)?;
                    self.standings.insert(c, s.clone());
                    s
                }
            };
            // A license is granted to one account: usage naming another could never be billed (AWS refuses the
            // pair, or takes it as a second record of the license's hour), so it is refused now, not acked and
            // lost at submission.
            if let (Identity::Aws { account_id, license_arn }, Some(Standing { bound_account: Some(bound), .. })) =
                (identity.as_ref(), &standing)
                && bound != account_id
            {
                return Ok(IngestOutcome::NotActive(Inactive::OtherAccount {
                    license_arn: license_arn.clone(),
                    bound_account: bound.clone(),
                    account_id: account_id.clone(),
                }));
            }
            if let Some(st) = standing.map(|s| s.status).filter(|s| !s.accepts_usage()) {
                return Ok(IngestOutcome::NotActive(Inactive::Status(st)));
            }
        }

        let event_time_ms = ev.timestamp_ms.unwrap_or(received_ms);
        let (hour_ms, late) = match place(event_time_ms, received_ms, self.sealed_through, rules.late) {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        let probe = BucketKeyRef {
            hour_ms,
            product: &ev.product,
            identity: &identity,
            dimension: &ev.dimension,
            tags: &ev.tags,
        };
        // Added in place (`add` changes nothing when it fails); a bucket first read for this event joins the group
        // only if the event is counted.
        let added = match self.buckets.get_mut(&probe) {
            Some(b) => b.add(ev.quantity, late),
            None => {
                let bucket_key = probe.to_owned_key();
                let mut b = look.bucket(&bucket_key)?.unwrap_or_default();
                let added = b.add(ev.quantity, late);
                if added.is_ok() {
                    self.buckets.insert(bucket_key, b);
                }
                added
            }
        };
        if added.is_err() {
            return Ok(IngestOutcome::Overflow);
        }
        if late {
            self.late_events += 1;
        }
        let stored = StoredEvent {
            digest,
            late,
            product: ev.product.clone(),
            event_time_ms,
            hour_ms,
            recorded_at_ms: received_ms,
            quantity: ev.quantity,
        };
        let receipt = Receipt::from_stored(key, &stored, false);
        let (events, hasher) = (&self.events, &self.hasher);
        self.claimed.insert_unique(key_hash, events.len(), |&i| hasher.hash_one(events[i].0.as_str()));
        self.events.push((key.to_string(), stored));
        Ok(IngestOutcome::Stored(receipt))
    }

    /// The writes the group decided, to apply in one atomic write.
    pub fn into_writes(self) -> GroupWrites {
        GroupWrites {
            events: self.events,
            buckets: self.buckets.into_iter().collect(),
            replays: self.replays,
            late_events: self.late_events,
            unmapped_tenants: self.unmapped,
        }
    }
}

impl Bucket {
    /// Adds one event's quantity (and, if it arrived late, to the late share). On overflow nothing changes.
    pub fn add(&mut self, quantity: super::quantity::Micros, late: bool) -> Result<(), Overflow> {
        let total = self.total.checked_add(quantity).ok_or(Overflow)?;
        let late_total = if late { self.late.checked_add(quantity).ok_or(Overflow)? } else { self.late };
        self.total = total;
        self.late = late_total;
        self.events += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::clock::HOUR_MS;
    use crate::domain::quantity::Micros;

    #[test]
    fn a_borrowed_customer_key_hashes_and_compares_as_the_owned_one() {
        use std::hash::BuildHasher;
        let s = std::hash::RandomState::new();
        let refs =
            [CustomerRef::License("x".into()), CustomerRef::Legacy("x".into()), CustomerRef::License("y".into())];
        for (i, c) in refs.iter().enumerate() {
            assert_eq!(s.hash_one(c), s.hash_one(c.key()));
            assert_eq!(c.key().to_owned_ref(), *c);
            for (j, other) in refs.iter().enumerate() {
                assert_eq!(hashbrown::Equivalent::equivalent(&c.key(), other), i == j);
            }
        }
    }

    const T0: UnixMillis = 1_790_000_000_000 / HOUR_MS * HOUR_MS;

    /// The ledger as plain maps: what a store would answer at the start of a group.
    #[derive(Default)]
    struct Ledger {
        events: HashMap<String, StoredEvent>,
        mappings: HashMap<String, TenantMapping>,
        statuses: HashMap<CustomerRef, CustomerStatus>,
        /// The account each license's lifecycle names.
        bound: HashMap<CustomerRef, String>,
        buckets: HashMap<BucketKey, Bucket>,
    }

    impl Lookups for Ledger {
        type Error = std::convert::Infallible;
        fn event(&mut self, k: &str) -> Result<Option<StoredEvent>, Self::Error> {
            Ok(self.events.get(k).cloned())
        }
        fn mapping(&mut self, t: &str) -> Result<Option<TenantMapping>, Self::Error> {
            Ok(self.mappings.get(t).cloned())
        }
        fn standing(&mut self, c: &CustomerRef) -> Result<Option<Standing>, Self::Error> {
            Ok(self
                .statuses
                .get(c)
                .map(|status| Standing { status: status.clone(), bound_account: self.bound.get(c).cloned() }))
        }
        fn bucket(&mut self, k: &BucketKey) -> Result<Option<Bucket>, Self::Error> {
            Ok(self.buckets.get(k).cloned())
        }
    }

    impl Ledger {
        fn apply(&mut self, w: GroupWrites) {
            self.events.extend(w.events);
            self.buckets.extend(w.buckets);
        }
    }

    fn aws() -> Identity {
        Identity::Aws { account_id: "123456789012".into(), license_arn: "arn:l".into() }
    }

    fn ev(key: &str, identity: Identity, micros: u128, at: Option<UnixMillis>) -> UsageEvent {
        UsageEvent {
            idempotency_key: key.into(),
            product: "p".into(),
            identity,
            dimension: "d".into(),
            quantity: Micros(micros),
            timestamp_ms: at,
            tags: Default::default(),
        }
    }

    fn decide_all(
        l: &mut Ledger,
        sealed: Option<UnixMillis>,
        rules: IngestRules,
        now: UnixMillis,
        evs: &[UsageEvent],
    ) -> Vec<IngestOutcome> {
        let mut g = IngestGroup::new(sealed);
        let out = evs.iter().map(|e| g.decide(e, now, rules, l).unwrap()).collect();
        l.apply(g.into_writes());
        out
    }

    const CARRY: IngestRules = IngestRules { late: LatePolicy::Carry, max_lateness_ms: None };

    #[test]
    fn same_key_same_content_replays_other_content_conflicts_within_and_across_groups() {
        let mut l = Ledger::default();
        let a = ev("k", aws(), 5, Some(T0 + 1));
        let b = ev("k", aws(), 6, Some(T0 + 1));
        let out = decide_all(&mut l, None, CARRY, T0 + 2, &[a.clone(), a.clone(), b.clone()]);
        assert!(matches!(&out[0], IngestOutcome::Stored(r) if !r.replayed && r.hour_ms == T0), "{out:?}");
        assert!(matches!(&out[1], IngestOutcome::Replayed(r) if r.replayed), "{out:?}");
        assert!(matches!(&out[2], IngestOutcome::Conflict { existing } if !existing.replayed), "{out:?}");
        // The group counted the event once.
        assert_eq!(l.buckets.values().map(|b| b.total).collect::<Vec<_>>(), vec![Micros(5)]);
        let again = decide_all(&mut l, None, CARRY, T0 + 3, &[a, b]);
        assert!(matches!(again[0], IngestOutcome::Replayed(_)));
        assert!(matches!(again[1], IngestOutcome::Conflict { .. }));
        assert_eq!(l.buckets.values().next().unwrap().events, 1);
    }

    #[test]
    fn late_usage_goes_to_the_open_hour_or_is_refused_by_policy() {
        assert_eq!(place(T0 + 5, T0 + 2 * HOUR_MS, None, LatePolicy::Reject), Ok((T0, false)));
        assert_eq!(place(T0 + 5, T0 + 2 * HOUR_MS, Some(T0), LatePolicy::Reject), Ok((T0, false)));
        assert_eq!(
            place(T0 + 5, T0 + 2 * HOUR_MS + 7, Some(T0 + HOUR_MS), LatePolicy::Carry),
            Ok((T0 + 2 * HOUR_MS, true))
        );
        // Received before the watermark (a flush sealed the current hour): the first open hour.
        assert_eq!(place(T0 + 5, T0 + 9, Some(T0 + HOUR_MS), LatePolicy::Carry), Ok((T0 + HOUR_MS, true)));
        assert_eq!(
            place(T0 + 5, T0 + 9, Some(T0 + HOUR_MS), LatePolicy::Reject),
            Err(IngestOutcome::LateRejected { hour_ms: T0 })
        );
        let mut l = Ledger::default();
        let out = decide_all(&mut l, Some(T0 + HOUR_MS), CARRY, T0 + HOUR_MS + 1, &[ev("k", aws(), 3, Some(T0))]);
        assert!(matches!(&out[0], IngestOutcome::Stored(r) if r.hour_ms == T0 + HOUR_MS && r.event_time_ms == T0));
        let b = l.buckets.values().next().unwrap();
        assert_eq!((b.total, b.late), (Micros(3), Micros(3)));
    }

    #[test]
    fn usage_older_than_the_lateness_bound_is_refused_unless_it_is_a_retry() {
        let rules = IngestRules { late: LatePolicy::Carry, max_lateness_ms: Some(HOUR_MS) };
        let mut l = Ledger::default();
        let e = ev("old", aws(), 3, Some(T0));
        assert!(matches!(
            decide_all(&mut l, None, rules, T0 + 10, std::slice::from_ref(&e))[0],
            IngestOutcome::Stored(_)
        ));
        // An hour and a bit later the same event is a replay, a new one that old is too late.
        let now = T0 + HOUR_MS + 1;
        let out = decide_all(&mut l, None, rules, now, &[e, ev("new", aws(), 3, Some(T0))]);
        assert!(matches!(out[0], IngestOutcome::Replayed(_)), "{out:?}");
        assert_eq!(out[1], IngestOutcome::TooLate { event_time_ms: T0, max_lateness_ms: HOUR_MS });
        assert!(!l.events.contains_key("new"));
    }

    #[test]
    fn a_mapped_tenant_counts_under_its_identity_an_unmapped_one_is_held() {
        let mut l = Ledger::default();
        l.mappings.insert(
            "t1".into(),
            TenantMapping {
                tenant_id: "t1".into(),
                product: "p".into(),
                identity: aws(),
                agreement_id: None,
                updated_at_ms: T0,
            },
        );
        let mut g = IngestGroup::new(None);
        let e1 = ev("a", Identity::Tenant("t1".into()), 1, None);
        let e2 = ev("b", Identity::Tenant("t2".into()), 1, None);
        let e3 = ev("c", Identity::Tenant("t2".into()), 1, None);
        for e in [&e1, &e2, &e3] {
            assert!(matches!(g.decide(e, T0, CARRY, &mut l).unwrap(), IngestOutcome::Stored(_)));
        }
        let w = g.into_writes();
        assert_eq!(w.unmapped_tenants, vec!["t2".to_string()], "warned once per tenant");
        let mut ids: Vec<_> = w.buckets.iter().map(|(k, b)| (k.identity.clone(), b.events)).collect();
        ids.sort();
        assert_eq!(ids, vec![(Identity::Tenant("t2".into()), 2), (aws(), 1)]);
        // Mapped to another product: refused, naming both.
        let other = UsageEvent { product: "q".into(), ..ev("d", Identity::Tenant("t1".into()), 1, None) };
        let out = decide_all(&mut l, None, CARRY, T0, &[other]);
        let (kind, f) = out[0].refusal().unwrap();
        assert_eq!((kind, f.field.as_str()), (RefusalKind::NotActive, "customer"));
        assert!(f.message.contains("mapped to product \"p\", not \"q\""), "{f:?}");
    }

    #[test]
    fn a_license_bound_to_another_account_is_refused_naming_both() {
        let mut l = Ledger::default();
        let lic = CustomerRef::License("arn:l".into());
        l.statuses.insert(lic.clone(), CustomerStatus::Active);
        l.bound.insert(lic, "210987654321".into());
        let theirs = Identity::Aws { account_id: "210987654321".into(), license_arn: "arn:l".into() };
        let out = decide_all(&mut l, None, CARRY, T0, &[ev("a", aws(), 1, None), ev("b", theirs, 1, None)]);
        let (kind, f) = out[0].refusal().unwrap();
        assert_eq!((kind, f.field.as_str()), (RefusalKind::NotActive, "customer"));
        assert!(f.message.contains("belongs to CustomerAWSAccountId \"210987654321\""), "{f:?}");
        assert!(f.message.contains("not \"123456789012\""), "{f:?}");
        assert!(matches!(out[1], IngestOutcome::Stored(_)), "the bound account's own usage is stored: {:?}", out[1]);
    }

    #[test]
    fn a_customer_that_left_is_refused_directly_and_through_its_tenants() {
        let mut l = Ledger::default();
        l.statuses.insert(CustomerRef::License("arn:l".into()), CustomerStatus::Deprovisioning { since_ms: T0 });
        l.mappings.insert(
            "t".into(),
            TenantMapping {
                tenant_id: "t".into(),
                product: "p".into(),
                identity: aws(),
                agreement_id: None,
                updated_at_ms: 0,
            },
        );
        let out = decide_all(
            &mut l,
            None,
            CARRY,
            T0,
            &[ev("a", aws(), 1, None), ev("b", Identity::Tenant("t".into()), 1, None)],
        );
        for o in &out {
            assert!(
                matches!(o, IngestOutcome::NotActive(Inactive::Status(CustomerStatus::Deprovisioning { .. }))),
                "{o:?}"
            );
            assert!(o.refusal().unwrap().1.message.contains("deprovisioning"));
        }
        assert!(l.events.is_empty() && l.buckets.is_empty());
    }

    #[test]
    fn an_overflowing_bucket_refuses_the_event_and_keeps_the_total() {
        let mut l = Ledger::default();
        let big = u128::MAX - 10;
        let out = decide_all(
            &mut l,
            None,
            CARRY,
            T0,
            &[ev("a", aws(), big, None), ev("b", aws(), 11, None), ev("c", aws(), 10, None)],
        );
        assert!(matches!(out[0], IngestOutcome::Stored(_)));
        assert_eq!(out[1], IngestOutcome::Overflow);
        assert!(matches!(out[2], IngestOutcome::Stored(_)));
        assert_eq!(l.buckets.values().next().unwrap().total, Micros(u128::MAX));
        assert!(!l.events.contains_key("b"));
        // The late share can never wrap either.
        let mut b = Bucket { total: Micros(0), events: 0, late: Micros(u128::MAX) };
        assert_eq!(b.add(Micros(1), true), Err(Overflow));
        assert_eq!(b, Bucket { total: Micros(0), events: 0, late: Micros(u128::MAX) }, "unchanged on overflow");
    }

    #[test]
    fn refusal_labels_are_bounded_and_messages_name_the_field() {
        let invalid = IngestOutcome::Invalid(FieldError { field: "tags[\"x\"]".into(), message: "m".into() });
        assert_eq!(invalid.refusal_reason().as_deref(), Some("invalid_tags"));
        let late = IngestOutcome::TooLate { event_time_ms: T0, max_lateness_ms: 24 * HOUR_MS };
        let (kind, f) = late.refusal().unwrap();
        assert_eq!((kind, f.field.as_str()), (RefusalKind::Late, "timestamp"));
        assert!(f.message.contains("pipeline.max_lateness (1day)"), "{f:?}");
        assert_eq!(IngestOutcome::Overflow.refusal_reason().as_deref(), Some("overflow"));
        let stored = IngestOutcome::Stored(Receipt {
            idempotency_key: "k".into(),
            replayed: false,
            product: "p".into(),
            event_time_ms: 0,
            hour_ms: 0,
            recorded_at_ms: 0,
        });
        assert!(stored.refusal().is_none() && stored.refusal_reason().is_none());
    }
}
