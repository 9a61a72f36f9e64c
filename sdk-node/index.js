'use strict';
// meterd: record SaaS usage for AWS Marketplace through the local meterd agent.
//
// A thin facade over the native client (meterd.node, built from ../proto's Rust SDK): it checks and normalises
// arguments (exact quantities only, Date timestamps, one customer shape), turns times into Dates and native
// errors into MeterdError subclasses. Retries, idempotency keys, timeouts and batching are the Rust client's.

const fs = require('node:fs');
const path = require('node:path');
const errors = require('./errors');

/** The prebuilt package for this platform, named as `napi create-npm-dirs` names them (npm/<platform>/). */
function platformPackage() {
  const { platform, arch } = process;
  let abi = '';
  if (platform === 'linux') {
    // glibcVersionRuntime is absent on musl (Alpine), which needs its own build.
    const header = process.report && process.report.getReport ? process.report.getReport().header : {};
    abi = header.glibcVersionRuntime ? '-gnu' : '-musl';
  } else if (platform === 'win32') {
    abi = '-msvc';
  }
  return `@meterd/meterd-${platform}-${arch}${abi}`;
}

/** The native addon, the first of:
 *  1. meterd.node beside this file: a source build (`npm install ./sdk-node` runs scripts/build.js);
 *  2. the prebuilt platform package: an optionalDependency of the published package, of which npm installs only
 *     the one whose os/cpu/libc match (no install script, no cargo);
 *  3. in a source checkout whose install script did not run (`--ignore-scripts`, an npm `allowScripts` policy):
 *     build it now with cargo, once. */
function loadNative() {
  const file = path.join(__dirname, 'meterd.node');
  if (fs.existsSync(file)) return require(file);
  const pkg = platformPackage();
  try {
    return require(pkg);
  } catch (e) {
    // Only "not installed" falls through; an addon that is there but cannot load (ERR_DLOPEN_FAILED, e.g. a
    // glibc older than the build's) is reported as it is.
    if (e.code !== 'MODULE_NOT_FOUND' || !String(e.message).includes(pkg)) throw e;
  }
  const build = path.join(__dirname, 'scripts', 'build.js');
  if (!fs.existsSync(build) || !fs.existsSync(path.join(__dirname, 'Cargo.toml'))) {
    throw new Error(
      `meterd: no native addon for ${process.platform}-${process.arch}: the prebuilt package ${pkg} is not ` +
        'installed (npm leaves optional dependencies out with --omit=optional or --no-optional, and prebuilt ' +
        'packages exist for linux x64/arm64 (glibc) and macOS x64/arm64). Build from source instead: ' +
        'npm install <meterd checkout>/sdk-node (needs cargo).',
    );
  }
  const { spawnSync } = require('node:child_process');
  console.error('meterd: the native addon is not built yet; building it now with cargo (once)');
  const r = spawnSync(process.execPath, [build], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`meterd: building the native addon failed; run: node ${build}`);
  return require(file);
}

const { NativeClient } = loadNative();

const USAGE_KEYS = new Set(['customer', 'dimension', 'quantity', 'timestamp', 'tags', 'idempotencyKey', 'product']);

/** A customer named by AWS account id and license ARN (Concurrent Agreements; `identity = "license"`). */
function awsCustomer(accountId, licenseArn) {
  return { accountId, licenseArn };
}

/** A customer named by the CustomerIdentifier of a legacy listing (`identity = "legacy"`). */
function legacyCustomer(customerIdentifier, productCode) {
  return productCode === undefined ? { customerIdentifier } : { customerIdentifier, productCode };
}

/** `{accountId, licenseArn}` / `{customerIdentifier, productCode?}` → the native identity fields, set on `out`;
 *  false when `c` is neither shape. */
function setIdentity(out, c) {
  if (c && typeof c.accountId === 'string' && typeof c.licenseArn === 'string') {
    out.awsAccountId = c.accountId;
    out.licenseArn = c.licenseArn;
  } else if (c && typeof c.customerIdentifier === 'string') {
    out.customerIdentifier = c.customerIdentifier;
    if (c.productCode !== undefined) out.productCode = c.productCode;
  } else {
    return false;
  }
  return true;
}

function quantityText(q, where) {
  if (typeof q === 'string') return q;
  if (typeof q === 'bigint') return q.toString();
  if (typeof q === 'number') {
    if (Number.isSafeInteger(q)) return String(q);
    throw new TypeError(
      `${where}.quantity ${q} is not a safe integer: pass a decimal string ("0.25") or a bigint; ` +
        'a JS number cannot hold most decimals exactly',
    );
  }
  throw new TypeError(`${where}.quantity must be a string, bigint or safe integer, not ${typeof q}`);
}

function nativeUsage(u, i) {
  const where = i === undefined ? 'usage' : `usages[${i}]`;
  if (u === null || typeof u !== 'object') throw new TypeError(`${where} must be an object`);
  for (const k of Object.keys(u)) {
    if (!USAGE_KEYS.has(k)) throw new TypeError(`${where} has an unknown key ${JSON.stringify(k)}`);
  }
  const out = { dimension: u.dimension, quantity: quantityText(u.quantity, where) };
  if (typeof u.dimension !== 'string') throw new TypeError(`${where}.dimension must be a string`);
  const c = u.customer;
  // null: no customer — products with identity = "deployment" (AMI and container products), where AWS knows the
  // buyer from the credentials. An absent key stays an error, so forgetting the customer is not silently allowed.
  if (c === null) out.deployment = true;
  else if (typeof c === 'string') out.tenantId = c;
  else if (!setIdentity(out, c)) {
    throw new TypeError(
      `${where}.customer must be a tenant id (string), awsCustomer(accountId, licenseArn), legacyCustomer(customerIdentifier) or null (identity = "deployment" products)`,
    );
  }
  if (u.timestamp !== undefined && u.timestamp !== null) {
    if (!(u.timestamp instanceof Date) || Number.isNaN(u.timestamp.getTime())) {
      throw new TypeError(`${where}.timestamp must be a valid Date`);
    }
    out.timestampMs = u.timestamp.getTime();
  }
  if (u.tags !== undefined && u.tags !== null) {
    for (const [k, v] of Object.entries(u.tags)) {
      if (typeof v !== 'string') throw new TypeError(`${where}.tags[${JSON.stringify(k)}] must be a string`);
    }
    out.tags = u.tags;
  }
  if (u.product !== undefined && u.product !== null) out.product = stringArg(`${where}.product`, u.product);
  if (u.idempotencyKey !== undefined && u.idempotencyKey !== null) {
    out.idempotencyKey = stringArg(`${where}.idempotencyKey`, u.idempotencyKey);
  }
  if (out.productCode !== undefined && out.productCode !== null) stringArg(`${where}.customer.productCode`, out.productCode);
  return out;
}

// A batch crosses to the native addon packed (sdk-node/src/packed.rs has the layout and why): all strings in one
// string, everything else in one Float64Array. These flags say which optional fields an event has.
const TENANT = 1;
const AWS_ACCOUNT = 1 << 1;
const LICENSE_ARN = 1 << 2;
const CUSTOMER_IDENTIFIER = 1 << 3;
const PRODUCT_CODE = 1 << 4;
const DEPLOYMENT = 1 << 5;
const TIMESTAMP = 1 << 6;
const TAGS = 1 << 7;
const PRODUCT = 1 << 8;
const IDEMPOTENCY_KEY = 1 << 9;

/** `usages` checked and normalised by `nativeUsage`, packed: `[text, nums]`. */
function packBatch(usages) {
  const strings = [];
  const nums = [];
  const put = (s) => {
    strings.push(s);
    nums.push(s.length);
  };
  for (let i = 0; i < usages.length; i++) {
    const u = nativeUsage(usages[i], i);
    const flagsAt = nums.push(0) - 1;
    let flags = 0;
    if (u.deployment) flags |= DEPLOYMENT;
    if (u.tenantId !== undefined) {
      flags |= TENANT;
      put(u.tenantId);
    }
    if (u.awsAccountId !== undefined) {
      flags |= AWS_ACCOUNT | LICENSE_ARN;
      put(u.awsAccountId);
      put(u.licenseArn);
    }
    if (u.customerIdentifier !== undefined) {
      flags |= CUSTOMER_IDENTIFIER;
      put(u.customerIdentifier);
    }
    if (u.productCode !== undefined && u.productCode !== null) {
      flags |= PRODUCT_CODE;
      put(u.productCode);
    }
    put(u.dimension);
    put(u.quantity);
    if (u.product !== undefined) {
      flags |= PRODUCT;
      put(u.product);
    }
    if (u.idempotencyKey !== undefined) {
      flags |= IDEMPOTENCY_KEY;
      put(u.idempotencyKey);
    }
    if (u.timestampMs !== undefined) {
      flags |= TIMESTAMP;
      nums.push(u.timestampMs);
    }
    if (u.tags !== undefined) {
      flags |= TAGS;
      const tags = Object.entries(u.tags);
      nums.push(tags.length);
      for (const [k, v] of tags) {
        put(k);
        put(v);
      }
    }
    nums[flagsAt] = flags;
  }
  return [strings.join(''), new Float64Array(nums)];
}

/** The native packed results → one Receipt or MeterdError per event, in order (layout: src/packed.rs). */
function unpackResults({ keys, text, nums }) {
  const out = [];
  let t = 0;
  let k = 0;
  for (let i = 0; i < nums.length; ) {
    if (nums[i] === 0) {
      const product = text.slice(t, (t += nums[i + 1]));
      out.push({
        idempotencyKey: keys[k++],
        replayed: nums[i + 2] === 1,
        product,
        eventTime: new Date(nums[i + 3]),
        usageHour: new Date(nums[i + 4]),
        recordedAt: new Date(nums[i + 5]),
      });
      i += 6;
    } else {
      const code = text.slice(t, (t += nums[i + 1]));
      const field = nums[i + 2] < 0 ? null : text.slice(t, (t += nums[i + 2]));
      const message = text.slice(t, (t += nums[i + 3]));
      const grpcCode = nums[i + 4] < 0 ? null : nums[i + 4];
      out.push(errors.fromNative({ code, field, message, grpcCode }));
      i += 5;
    }
  }
  return out;
}

function receipt(r) {
  return {
    idempotencyKey: r.idempotencyKey,
    replayed: r.replayed,
    product: r.product,
    eventTime: new Date(r.eventTimeMs),
    usageHour: new Date(r.usageHourMs),
    recordedAt: new Date(r.recordedAtMs),
  };
}

/** The native identity fields → `awsCustomer(...)` / `legacyCustomer(...)` shapes (null when there is none). */
function identity(i) {
  if (!i) return null;
  if (i.awsAccountId != null) return awsCustomer(i.awsAccountId, i.licenseArn ?? '');
  if (i.customerIdentifier != null) return legacyCustomer(i.customerIdentifier, i.productCode ?? undefined);
  return null;
}

function customerInfo(c) {
  const { identity: id, agreementId, history, notSubscribedAt, ...rest } = withDates(c);
  return {
    ...rest,
    customer: identity(id),
    agreementId: agreementId ?? null,
    history: history.map((h) => ({ ...h, eventId: h.eventId ?? null })),
    notSubscribedAt: notSubscribedAt ?? null,
  };
}

function stringArg(name, v) {
  if (typeof v !== 'string') throw new TypeError(`${name} must be a string`);
  return v;
}

function optionsArg(name, options, keys) {
  if (options === undefined || options === null) return {};
  if (typeof options !== 'object') throw new TypeError(`${name} options must be an object`);
  const unknown = Object.keys(options).filter((k) => !keys.includes(k));
  if (unknown.length) throw new TypeError(`${name}: unknown option(s): ${unknown.join(', ')}`);
  for (const k of keys) {
    if (options[k] !== undefined && options[k] !== null && typeof options[k] !== 'string') {
      throw new TypeError(`${name}: ${k} must be a string`);
    }
  }
  return options;
}

/** `fooMs` epoch-millisecond fields become `foo` Dates (or null), recursively; `clockSkewMs` stays a number. */
function withDates(value) {
  if (Array.isArray(value)) return value.map(withDates);
  if (value === null || typeof value !== 'object') return value;
  const out = {};
  for (const [k, v] of Object.entries(value)) {
    if (k.endsWith('Ms') && k !== 'clockSkewMs') out[k.slice(0, -2)] = v == null ? null : new Date(v);
    else out[k] = withDates(v);
  }
  return out;
}

async function call(promise) {
  try {
    return await promise;
  } catch (e) {
    throw errors.convert(e);
  }
}

/** A report being streamed: an async iterable of rows or groups; `trailer` (the totals) is set once it ends. */
class ReportStream {
  #native;
  /** The whole ledger's totals and the sum of what was streamed; null until the stream has ended. */
  trailer = null;

  constructor(native) {
    this.#native = native;
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      const item = await call(this.#native.next());
      if (item == null) return;
      if (item.trailer) {
        this.trailer = withDates(item.trailer);
        return;
      }
      yield withDates(item.row ?? item.group);
    }
  }
}

class Client {
  #native;
  #target;

  /**
   * @param {string} [target] `host:port`, `http://host:port` or `unix:/path/to/meterd.sock`.
   * @param {object} [options] `timeoutMs` (10000, the whole call with retries), `connectTimeoutMs` (2000),
   *   `maxAttempts` (10), `product` (default product), `maxBatchEvents` (10000 per request).
   */
  constructor(target = '127.0.0.1:7171', options = {}) {
    if (typeof target !== 'string') throw new TypeError('target must be a string');
    const { timeoutMs = 10_000, connectTimeoutMs = 2_000, maxAttempts = 10, product = null, maxBatchEvents = 10_000, ...rest } =
      options;
    const unknown = Object.keys(rest);
    if (unknown.length) throw new TypeError(`unknown option(s): ${unknown.join(', ')}`);
    for (const [k, v] of Object.entries({ maxAttempts, maxBatchEvents })) {
      if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${k} must be a positive integer`);
    }
    try {
      this.#native = new NativeClient(target, {
        timeoutMs,
        connectTimeoutMs,
        maxAttempts,
        product: product ?? undefined,
        maxBatchEvents,
      });
    } catch (e) {
      throw errors.convert(e);
    }
    this.#target = target;
  }

  get target() {
    return this.#target;
  }

  /** Records one event; resolves once the agent has it on disk. Rejects with a MeterdError subclass. */
  async recordUsage(usage) {
    return receipt(await call(this.#native.recordUsage(nativeUsage(usage))));
  }

  /** Records many events; resolves to one Receipt or MeterdError per event, in order. */
  async recordUsageBatch(usages) {
    if (!Array.isArray(usages)) usages = Array.from(usages);
    const [text, nums] = packBatch(usages);
    return unpackResults(await call(this.#native.recordUsageBatchPacked(text, nums)));
  }

  async status() {
    return withDates(await call(this.#native.status()));
  }

  async flush() {
    return withDates(await call(this.#native.flush()));
  }

  async report() {
    return withDates(await call(this.#native.report()));
  }

  /**
   * The report streamed (`Admin.ReportStream`): resolves to a ReportStream to read with `for await`. It yields
   * groups (the summary per hour x product x dimension) or, with `rows: true`, rows; `stream.trailer` holds the
   * totals once it ends. Options: `rows`, `since`/`until` (Dates), `customer`, `dimension`, `state`, `product`.
   */
  async reportStream(options) {
    const o = options ?? {};
    if (typeof o !== 'object') throw new TypeError('reportStream options must be an object');
    const { rows = false, since = null, until = null, ...filters } = o;
    optionsArg('reportStream', filters, ['customer', 'dimension', 'state', 'product']);
    if (typeof rows !== 'boolean') throw new TypeError('reportStream: rows must be a boolean');
    const ms = (name, d) => {
      if (d === null || d === undefined) return undefined;
      if (!(d instanceof Date) || Number.isNaN(d.getTime())) throw new TypeError(`reportStream: ${name} must be a Date`);
      return d.getTime();
    };
    const query = { rows, sinceMs: ms('since', since), untilMs: ms('until', until) };
    for (const k of ['customer', 'dimension', 'state', 'product']) query[k] = filters[k] ?? undefined;
    return new ReportStream(await call(this.#native.reportStream(query)));
  }

  /**
   * Creates or replaces the mapping of `tenantId` to `customer` (`awsCustomer(...)` or `legacyCustomer(...)`).
   * Open usage held under the tenant id moves to the identity (`bucketsMoved`).
   */
  async putCustomer(tenantId, customer, options) {
    stringArg('tenantId', tenantId);
    const { product, agreementId } = optionsArg('putCustomer', options, ['product', 'agreementId']);
    const id = {};
    if (!setIdentity(id, customer)) {
      throw new TypeError(
        'customer must be awsCustomer(accountId, licenseArn) or legacyCustomer(customerIdentifier) (the identity the tenant id maps to)',
      );
    }
    return customerInfo(await call(this.#native.putCustomer(tenantId, id, product ?? undefined, agreementId ?? undefined)));
  }

  /** The mapping of `tenantId` and its lifecycle; rejects with NotFound when the tenant has none. */
  async getCustomer(tenantId) {
    return customerInfo(await call(this.#native.getCustomer(stringArg('tenantId', tenantId))));
  }

  async listCustomers() {
    return (await call(this.#native.listCustomers())).map(customerInfo);
  }

  /** Removes the mapping of `tenantId` (the identity's history is kept); false when there was none. */
  async removeCustomer(tenantId) {
    return call(this.#native.removeCustomer(stringArg('tenantId', tenantId)));
  }

  /** Resolves a registration token with AWS ResolveCustomer and stores the mapping for `tenantId`. */
  async resolveCustomer(registrationToken, tenantId, options) {
    stringArg('registrationToken', registrationToken);
    stringArg('tenantId', tenantId);
    const { product } = optionsArg('resolveCustomer', options, ['product']);
    return customerInfo(await call(this.#native.resolveCustomer(registrationToken, tenantId, product ?? undefined)));
  }

  /** Applies one lifecycle event given as its JSON text (EventBridge event, SNS envelope or SNS message). */
  async applyEvent(eventJson) {
    return call(this.#native.applyEvent(stringArg('eventJson', eventJson)));
  }

  /** Drops the connection (a later call opens a new one). */
  close() {
    this.#native.close();
  }
}

module.exports = {
  Client,
  awsCustomer,
  legacyCustomer,
  MeterdError: errors.MeterdError,
  InvalidUsage: errors.InvalidUsage,
  Conflict: errors.Conflict,
  UsageRefused: errors.UsageRefused,
  NotFound: errors.NotFound,
  CustomerNotActive: errors.CustomerNotActive,
  LateUsageRejected: errors.LateUsageRejected,
  AgentUnavailable: errors.AgentUnavailable,
  Timeout: errors.Timeout,
  InvalidTarget: errors.InvalidTarget,
  AgentError: errors.AgentError,
};
