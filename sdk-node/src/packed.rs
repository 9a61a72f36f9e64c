//! A batch crossing N-API packed, both ways: the strings in one UTF-16 string (but the receipts' keys, see
//! `NativePackedResults`), everything else (which fields are set, string lengths, times) in one `Float64Array`.
//! `index.js` packs and unpacks.
//!
//! Why: one JS object per event cost the caller more than the rest of the call. napi's `#[napi(object)]`
//! conversion makes one `napi_get_named_property` per declared field and event (each re-creates and internalizes
//! the key's V8 string: 12,000 for 1,000 events), and each result was two more objects built through N-API
//! property by property. Packed, a batch is four N-API values whatever its size; the per-event work is slicing
//! (Rust here, JIT-compiled JS in `index.js`). Strings are cut by UTF-16 length and decoded with
//! `String::from_utf16_lossy`, which replaces a lone surrogate by U+FFFD exactly as `napi_get_value_string_utf8`
//! did for the object form. The layout is private to this package: `index.js` and this file change together.

use meterd_proto::sdk;
use napi::bindgen_prelude::{Float64Array, Utf16String};
use napi_derive::napi;

use crate::usage::{customer, from_ms, to_ms};

// Which optional fields an event has (its first number). `dimension` and `quantity` are always there. Strings
// follow in this order, each as its length: tenant id, account id, license ARN, customer identifier, product
// code, dimension, quantity, product, idempotency key; then the timestamp (ms), then the tag count and each
// tag's key and value lengths.
const TENANT: u32 = 1;
const AWS_ACCOUNT: u32 = 1 << 1;
const LICENSE_ARN: u32 = 1 << 2;
const CUSTOMER_IDENTIFIER: u32 = 1 << 3;
const PRODUCT_CODE: u32 = 1 << 4;
const DEPLOYMENT: u32 = 1 << 5;
const TIMESTAMP: u32 = 1 << 6;
const TAGS: u32 = 1 << 7;
const PRODUCT: u32 = 1 << 8;
const IDEMPOTENCY_KEY: u32 = 1 << 9;
const ALL: u32 = (1 << 10) - 1;

/// Reads a packed batch; every read is bounds-checked, so a malformed one (a bug in `index.js`) is an error,
/// never a panic.
struct Reader<'a> {
    text: &'a [u16],
    pos: usize,
    nums: &'a [f64],
    at: usize,
}

fn malformed(what: &str) -> napi::Error {
    napi::Error::from_reason(format!("meterd: malformed packed batch ({what}); index.js and meterd.node disagree"))
}

impl Reader<'_> {
    fn num(&mut self) -> napi::Result<f64> {
        let n = *self.nums.get(self.at).ok_or_else(|| malformed("too few numbers"))?;
        self.at += 1;
        Ok(n)
    }

    fn count(&mut self) -> napi::Result<usize> {
        let n = self.num()?;
        if n >= 0.0 && n.fract() == 0.0 && n <= self.text.len() as f64 {
            Ok(n as usize)
        } else {
            Err(malformed("bad length"))
        }
    }

    fn string(&mut self) -> napi::Result<String> {
        let len = self.count()?;
        let units = self.text.get(self.pos..self.pos + len).ok_or_else(|| malformed("text too short"))?;
        self.pos += len;
        Ok(String::from_utf16_lossy(units))
    }

    fn string_if(&mut self, flags: u32, flag: u32) -> napi::Result<Option<String>> {
        if flags & flag != 0 { self.string().map(Some) } else { Ok(None) }
    }

    fn usage(&mut self) -> napi::Result<sdk::Usage> {
        let flags = self.num()?;
        if !(0.0..=ALL as f64).contains(&flags) || flags.fract() != 0.0 {
            return Err(malformed("bad flags"));
        }
        let flags = flags as u32;
        let tenant = self.string_if(flags, TENANT)?;
        let account = self.string_if(flags, AWS_ACCOUNT)?;
        let license = self.string_if(flags, LICENSE_ARN)?;
        let legacy = self.string_if(flags, CUSTOMER_IDENTIFIER)?;
        let product_code = self.string_if(flags, PRODUCT_CODE)?;
        let dimension = self.string()?;
        let quantity = self.string()?;
        let mut usage = sdk::Usage::new(
            customer(flags & DEPLOYMENT != 0, tenant, account, license, legacy, product_code),
            dimension,
            quantity,
        );
        usage.product = self.string_if(flags, PRODUCT)?;
        usage.idempotency_key = self.string_if(flags, IDEMPOTENCY_KEY)?;
        if flags & TIMESTAMP != 0 {
            usage.timestamp = Some(from_ms(self.num()?));
        }
        if flags & TAGS != 0 {
            for _ in 0..self.count()? {
                let key = self.string()?;
                usage.tags.insert(key, self.string()?);
            }
        }
        Ok(usage)
    }
}

/// The events of a packed batch, in order.
pub fn usages(text: &[u16], nums: &[f64]) -> napi::Result<Vec<sdk::Usage>> {
    let mut r = Reader { text, pos: 0, nums, at: 0 };
    let mut out = Vec::new();
    while r.at < nums.len() {
        out.push(r.usage()?);
    }
    if r.pos != text.len() {
        return Err(malformed("text left over"));
    }
    Ok(out)
}

/// A batch's results, packed: per event `0, product length, replayed, event time, usage hour, recorded at` (a
/// receipt; times in epoch ms; its key is the next of `keys`) or `1, code length, field length (-1: none),
/// message length, gRPC code (-1: none)` (an error); the strings in that order in `text`. Keys are strings of
/// their own because callers keep them: a slice of `text` would keep the whole batch's text alive with it.
#[napi(object)]
pub struct NativePackedResults {
    pub keys: Vec<String>,
    pub text: Utf16String,
    pub nums: Float64Array,
}

fn put(text: &mut Vec<u16>, nums: &mut Vec<f64>, s: &str) {
    let before = text.len();
    text.extend(s.encode_utf16());
    nums.push((text.len() - before) as f64);
}

pub fn results(results: Vec<Result<sdk::Receipt, sdk::Error>>) -> NativePackedResults {
    // A receipt is its product's few UTF-16 units and 6 numbers.
    let mut keys = Vec::with_capacity(results.len());
    let mut text = Vec::with_capacity(results.len() * 8);
    let mut nums = Vec::with_capacity(results.len() * 6);
    for r in results {
        match r {
            Ok(r) => {
                nums.push(0.0);
                keys.push(r.idempotency_key);
                put(&mut text, &mut nums, &r.product);
                nums.extend([
                    f64::from(u8::from(r.replayed)),
                    to_ms(r.event_time),
                    to_ms(r.usage_hour),
                    to_ms(r.recorded_at),
                ]);
            }
            Err(e) => {
                nums.push(1.0);
                put(&mut text, &mut nums, e.code());
                match e.field() {
                    Some(f) => put(&mut text, &mut nums, f),
                    None => nums.push(-1.0),
                }
                put(&mut text, &mut nums, e.message());
                nums.push(e.grpc_code().map_or(-1.0, f64::from));
            }
        }
    }
    NativePackedResults { keys, text: Utf16String::from(text), nums: Float64Array::new(nums) }
}
