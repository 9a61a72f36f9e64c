// Type declarations of the `meterd` package (CommonJS and ESM entry points export the same names).

/** A customer named by AWS account id and license ARN (Concurrent Agreements; `identity = "license"`). */
export interface AwsCustomer {
  accountId: string;
  licenseArn: string;
}

/** A customer named by the CustomerIdentifier of a legacy listing (`identity = "legacy"`). */
export interface LegacyCustomer {
  customerIdentifier: string;
  productCode?: string;
}

/** A tenant id (mapped to the marketplace identity by the agent), or an explicit identity. */
export type Customer = string | AwsCustomer | LegacyCustomer;

/** An exact quantity: a decimal string ("0.25"), a bigint, or a safe integer. Other numbers throw TypeError. */
export type Quantity = string | bigint | number;

export interface Usage {
  /** `null` for products with `identity = "deployment"` (AMI and container products): no customer is sent. */
  customer: Customer | null;
  /** The dimension's API key exactly as listed in AWS Marketplace. */
  dimension: string;
  quantity: Quantity;
  /** When the usage happened; defaults to when the agent receives it. */
  timestamp?: Date | null;
  /** Up to 5 tags; they become the AWS UsageAllocations of the hourly record. */
  tags?: Record<string, string> | null;
  /** Unique per logical event; generated (UUID v4) once per call when absent and reused by its retries. */
  idempotencyKey?: string | null;
  /** The configured product; defaults to the client's, then the agent's default product. */
  product?: string | null;
}

/** What the agent stored for an event (on disk before the Promise resolved). */
export interface Receipt {
  idempotencyKey: string;
  /** True when the event was already stored under this key; it was counted once. */
  replayed: boolean;
  product: string;
  eventTime: Date;
  usageHour: Date;
  recordedAt: Date;
}

export interface ClientOptions {
  /** The whole budget of one call, retries included, in ms. Default 10000. */
  timeoutMs?: number;
  /** Time allowed to open a connection, in ms. Default 2000. */
  connectTimeoutMs?: number;
  /** Attempts per call, the first included. Default 10. */
  maxAttempts?: number;
  /** Product for events that name none. */
  product?: string | null;
  /** Events per request; larger batches are split and joined in order. Default 10000. */
  maxBatchEvents?: number;
}

export interface ProductStatus {
  name: string;
  identity: 'license' | 'legacy';
  dimensions: string[];
}

export interface AccountStatus {
  name: string;
  lastSuccessfulCall?: Date | null;
  clockSkewMs?: number | null;
  callsOk: number;
  callsThrottled: number;
  callsFailed: number;
  recordsAccepted: number;
  recordsRejected: number;
  recordsExpired: number;
}

export interface AgentStatus {
  version: string;
  startedAt?: Date | null;
  now?: Date | null;
  dataDir: string;
  schemaVersion: number;
  eventsStored: number;
  openBuckets: number;
  storeSizeBytes: number;
  products: ProductStatus[];
  pendingRecords: number;
  oldestPendingAgeSeconds: number;
  mostUrgentDeadline?: Date | null;
  sealedThrough?: Date | null;
  accounts: AccountStatus[];
  lateEvents: number;
  /** Pending records held under a tenant id with no marketplace identity yet: lost at their deadline. */
  recordsAtRisk: number;
  /** Marketplace customers by lifecycle state ('active', 'deprovisioning', 'ended'). */
  customersByStatus: Record<string, number>;
  /** Customers AWS last answered CustomerNotSubscribed for. */
  customersNotSubscribed: number;
  /** Records AWS answered DuplicateRecord for on their first send (revenue lost), and their whole units. */
  recordsLost: number;
  unitsLost: number;
  /** Free bytes on the data dir's filesystem (as of the last ingest) and the reserve kept (storage.min_free). */
  diskFreeBytes: number;
  diskReserveBytes: number;
  /** True while ingest is refused because free space is below the reserve. */
  diskFull: boolean;
  /** Usage drops of the last ended hour. */
  usageDrops: UsageDrop[];
  /** Pending records marked InFlight (sent, answer not recorded yet). */
  pendingInFlight: number;
  /** Whole units of the pending records, and of those at risk. */
  pendingUnits: number;
  unitsAtRisk: number;
  /** Seconds to send every pending record at the submitters' current rates (0 when nothing is pending). */
  projectedDrainSeconds: number;
  /** Fleet mode only: the nodes sharing the ledger and the submitters (the queue figures are then the fleet's). */
  fleet?: FleetStatus | null;
}

/** Fleet mode: the answering agent's spool, every node sharing the ledger, who submits for each account. */
export interface FleetStatus {
  nodeId: string;
  /** Events this agent acknowledged that are not yet in the shared ledger, and the oldest one's age. */
  spoolEvents: number;
  spoolOldestAgeSeconds: number;
  /** 'local' or 'shared' (fleet.ack). */
  ack: string;
  /** Empty when the shared ledger answered; otherwise why not (the queue figures are then zero). */
  databaseError: string;
  nodes: FleetNode[];
  submitters: FleetSubmitter[];
  /** Keys forwarded with other content than the event counted under them (recorded, never counted). */
  conflicts: number;
}

export interface FleetNode {
  nodeId: string;
  version: string;
  lastHeartbeat?: Date | null;
  /** Heartbeat within fleet.down_after: the seal waits for its forward. */
  live: boolean;
  /** Everything the node acknowledged before this is in the shared ledger (null before its first forward). */
  watermark?: Date | null;
  forwardLagSeconds: number;
  eventsForwarded: number;
  /** Known for the answering agent only. */
  spoolEvents?: number | null;
}

export interface FleetSubmitter {
  account: string;
  /** The submitter lease holder: it seals and submits for the account. */
  nodeId: string;
  epoch: number;
  leaseExpires?: Date | null;
}

/** An ended hour far below its own baseline (the same hour on previous days and weekdays). */
export interface UsageDrop {
  hour?: Date | null;
  product: string;
  dimension: string;
  /** Empty for the product x dimension as a whole; otherwise one of its biggest customers. */
  customer: string;
  /** Usage recorded in the hour, and the baseline (exact decimal strings). */
  observed: string;
  baseline: string;
}

export interface FlushResult {
  recordsSealed: number;
  hoursCarriedOnly: number;
  sealedThrough?: Date | null;
  /** Fleet mode: events forwarded from the agent's spool to the shared ledger by this flush. */
  eventsForwarded: number;
  /** Fleet mode: live nodes whose forward the seal still waits for (empty when every ended hour is sealed). */
  waitingFor: string[];
}

/** One hour x customer x dimension. Decimal amounts are exact decimal strings; whole units are numbers. */
export interface ReportRow {
  hour?: Date | null;
  product: string;
  customer: string;
  dimension: string;
  state: 'open' | 'sealed' | 'in_flight' | 'accepted' | 'rejected' | 'expired' | 'carried';
  recorded: string;
  late: string;
  carriedIn: string;
  carriedOut: string;
  sealed: number;
  accepted: number;
  rejected: number;
  expired: number;
  pending: number;
  reason: string;
  meteringRecordId: string;
  deadline?: Date | null;
}

/** recorded = accepted + rejected + expired + pending + carried + open, exactly (decimal strings). */
export interface ReportTotals {
  recorded: string;
  late: string;
  accepted: string;
  rejected: string;
  expired: string;
  pending: string;
  carried: string;
  open: string;
  rejectedByReason: Record<string, number>;
  expiredByReason: Record<string, number>;
  reconciled: boolean;
  /** Terminal records older than storage.retention: gone from the rows, still counted in these totals. */
  compactedRecords: number;
  /** Records AWS answered DuplicateRecord for on their first send (revenue lost), and their whole units. */
  lostRecords: number;
  lostUnits: number;
  /** Units of held tenant records merged into their identity's next hour (their AWS key was taken). */
  mergedUnits: number;
  /** Fleet mode: events whose key was already counted with other content (recorded, never counted). */
  conflicts: number;
}

export interface ReportStreamOptions {
  /** Rows (hour x customer x dimension) instead of the summary groups. */
  rows?: boolean;
  /** Hours from `since` (inclusive) to `until` (exclusive). */
  since?: Date | null;
  until?: Date | null;
  /** A customer as the report labels it: "aws:<account>/<license arn>", "legacy:<id>", "tenant:<id>", "deployment". */
  customer?: string | null;
  dimension?: string | null;
  /** open | sealed | in_flight | accepted | rejected | expired | carried | merged */
  state?: string | null;
  product?: string | null;
}

/** The summary of one hour x product x dimension (or, as `ReportTrailer.selected`, of everything streamed). */
export interface ReportGroup {
  hour: Date | null;
  product: string;
  dimension: string;
  /** Customers with usage in the group (0 in `ReportTrailer.selected`). */
  customers: number;
  rows: number;
  recorded: string;
  late: string;
  open: string;
  sealed: number;
  accepted: number;
  rejected: number;
  expired: number;
  pending: number;
  /** Rows by state. */
  states: Record<string, number>;
}

export interface ReportTrailer {
  /** The whole ledger's totals, whatever the filters. */
  totals: ReportTotals;
  selected: ReportGroup;
  rowsSent: number;
  groupsSent: number;
  /** False when a seal moved usage while rows streamed: read again. */
  consistent: boolean;
  restarts: number;
  usageDrops: UsageDrop[];
}

export interface ReportStream<T> extends AsyncIterable<T> {
  /** Set once the stream has been read to its end. */
  readonly trailer: ReportTrailer | null;
}

export interface Report {
  rows: ReportRow[];
  totals: ReportTotals;
  /** Usage drops of the last ended hour. */
  usageDrops: UsageDrop[];
}

/** One lifecycle event in a customer's history. */
export interface StatusChange {
  at: Date;
  status: 'active' | 'deprovisioning' | 'ended';
  source: string;
  eventId: string | null;
  /** False when the event changed nothing (a duplicate, or older than the current status). */
  applied: boolean;
}

/** A tenant's mapping to the marketplace identity AWS bills, and that identity's lifecycle. */
export interface CustomerInfo {
  tenantId: string;
  product: string;
  /** The identity the tenant maps to (null only if the agent sent none). */
  customer: AwsCustomer | LegacyCustomer | null;
  agreementId: string | null;
  status: 'active' | 'deprovisioning' | 'ended';
  history: StatusChange[];
  /** Last time AWS answered CustomerNotSubscribed for this customer's usage. */
  notSubscribedAt: Date | null;
  /** Open hourly buckets moved from the tenant id to the identity by this call (put/resolve); 0 otherwise. */
  bucketsMoved: number;
}

/** What applyEvent did. */
export interface EventOutcome {
  /** False for duplicates, events older than the current status, and agreements meterd has never seen. */
  applied: boolean;
  /** The customer's status afterwards ('' when the agreement is unknown). */
  status: string;
  /** Records sealed at once for the customer's final reporting hour. */
  recordsSealed: number;
  summary: string;
}

export type ErrorCode =
  | 'INVALID_USAGE'
  | 'CONFLICT'
  | 'USAGE_REFUSED'
  | 'CUSTOMER_NOT_ACTIVE'
  | 'LATE_USAGE_REJECTED'
  | 'NOT_FOUND'
  | 'AGENT_UNAVAILABLE'
  | 'TIMEOUT'
  | 'INVALID_TARGET'
  | 'AGENT_ERROR';

export class MeterdError extends Error {
  static readonly code: ErrorCode | 'METERD_ERROR';
  static readonly retryable: boolean;
  constructor(message: string, details?: { field?: string | null; grpcCode?: number | null });
  /** Stable across versions and languages (the Python SDK uses the same strings). */
  readonly code: ErrorCode;
  /** The field path that failed ("event.quantity", "events[2].tags"), when the error is about one field. */
  readonly field: string | null;
  /** The gRPC status code the error came from. */
  readonly grpcCode: number | null;
  /** True when the client already retried this kind itself; a later retry with the same key is safe. */
  readonly retryable: boolean;
}
export class InvalidUsage extends MeterdError {}
export class Conflict extends MeterdError {}
export class UsageRefused extends MeterdError {}
export class CustomerNotActive extends UsageRefused {}
export class LateUsageRejected extends UsageRefused {}
/** The thing asked for does not exist, e.g. getCustomer of a tenant without a customer mapping. */
export class NotFound extends MeterdError {}
export class AgentUnavailable extends MeterdError {}
export class Timeout extends MeterdError {}
export class InvalidTarget extends MeterdError {}
export class AgentError extends MeterdError {}

export function awsCustomer(accountId: string, licenseArn: string): AwsCustomer;
export function legacyCustomer(customerIdentifier: string, productCode?: string): LegacyCustomer;

/** A client of one meterd agent. One connection, shared by every concurrent call. */
export class Client {
  /** @param target `host:port`, `http://host:port` or `unix:/path/to/meterd.sock` (default 127.0.0.1:7171). */
  constructor(target?: string, options?: ClientOptions);
  readonly target: string;
  /** Records one event; resolves once the agent has it on disk. */
  recordUsage(usage: Usage): Promise<Receipt>;
  /** One Receipt or MeterdError per event, in order. Rejects only when the batch cannot be delivered. */
  recordUsageBatch(usages: Iterable<Usage>): Promise<Array<Receipt | MeterdError>>;
  status(): Promise<AgentStatus>;
  /** Seals every ended hour now and wakes the submitters. */
  flush(): Promise<FlushResult>;
  /** Where every recorded unit went, per hour x customer x dimension, in one reply: for small ledgers. */
  report(): Promise<Report>;
  /** The report streamed: groups (summary) or, with `rows: true`, rows; `trailer` holds the totals at the end. */
  reportStream(options: ReportStreamOptions & { rows: true }): Promise<ReportStream<ReportRow>>;
  reportStream(options?: ReportStreamOptions): Promise<ReportStream<ReportGroup>>;
  /** Creates or replaces the mapping of `tenantId` to `customer`; open usage held under the tenant id moves to it. */
  putCustomer(
    tenantId: string,
    customer: AwsCustomer | LegacyCustomer,
    options?: { product?: string | null; agreementId?: string | null },
  ): Promise<CustomerInfo>;
  /** Rejects with NotFound when the tenant has no mapping. */
  getCustomer(tenantId: string): Promise<CustomerInfo>;
  listCustomers(): Promise<CustomerInfo[]>;
  /** False when there was no mapping. */
  removeCustomer(tenantId: string): Promise<boolean>;
  /** AWS ResolveCustomer for a registration token; stores the mapping for `tenantId`. An invalid token rejects
   *  with InvalidUsage, an expired one with UsageRefused. */
  resolveCustomer(registrationToken: string, tenantId: string, options?: { product?: string | null }): Promise<CustomerInfo>;
  /** Applies one lifecycle event given as its JSON text (EventBridge event, SNS envelope or SNS message). */
  applyEvent(eventJson: string): Promise<EventOutcome>;
  /** Drops the connection (a later call opens a new one). */
  close(): void;
}
