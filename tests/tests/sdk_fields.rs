//! The SDKs' public types keep up with the API: every field of each reply message (and of the usage event)
//! in the proto descriptors must appear in the Python typings (`snake_case`) and the Node typings
//! (`camelCase`), unless listed below as deliberately renamed or left out, with the reason; and every public message
//! is either mirrored by both SDKs or listed with the reason it is not.

use std::collections::BTreeSet;
use std::path::Path;

use prost::Message;

/// proto message → (Python class, Node interface).
const TYPES: &[(&str, &str, &str)] = &[
    ("UsageEvent", "Usage", "Usage"),
    ("AwsCustomer", "AwsCustomer", "AwsCustomer"),
    ("LegacyCustomer", "LegacyCustomer", "LegacyCustomer"),
    ("Receipt", "Receipt", "Receipt"),
    ("StatusResponse", "AgentStatus", "AgentStatus"),
    ("ProductStatus", "ProductStatus", "ProductStatus"),
    ("AccountStatus", "AccountStatus", "AccountStatus"),
    ("FlushResponse", "FlushResult", "FlushResult"),
    ("ReportRow", "ReportRow", "ReportRow"),
    ("ReportTotals", "ReportTotals", "ReportTotals"),
    ("ReportResponse", "Report", "Report"),
    ("StatusChange", "StatusChange", "StatusChange"),
    ("CustomerInfo", "CustomerInfo", "CustomerInfo"),
    ("ApplyEventResponse", "EventOutcome", "EventOutcome"),
    ("UsageDrop", "UsageDrop", "UsageDrop"),
    ("ReportGroup", "ReportGroup", "ReportGroup"),
    ("ReportTrailer", "ReportTrailer", "ReportTrailer"),
    ("FleetStatus", "FleetStatus", "FleetStatus"),
    ("FleetNode", "FleetNode", "FleetNode"),
    ("FleetSubmitter", "FleetSubmitter", "FleetSubmitter"),
];

/// (proto message, proto field, why the SDKs do not expose it under its proto name).
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    // The SDKs take one `customer` argument (a tenant id string or an identity object) instead of the oneof.
    ("UsageEvent", "customer", "exposed as the customer argument"),
    // The identity oneof of CustomerInfo is exposed as `customer` (an AwsCustomer or LegacyCustomer).
    ("CustomerInfo", "aws_account", "inside `customer`"),
    ("CustomerInfo", "legacy", "inside `customer`"),
    // The Node SDK names the account id `accountId` (the Python SDK `account_id`): shorter, same meaning.
    ("AwsCustomer", "customer_aws_account_id", "named account_id / accountId"),
    // The submission rules `meterd import` checks rows against before sending; tooling reads them, applications
    // recording usage have no use for them.
    ("StatusResponse", "policy", "for tooling (meterd import), not exposed by the SDKs"),
    // Start-up checks of deployment-mode products: read with `meterd status` (text and --json); not yet in the SDKs.
    ("StatusResponse", "deployment_checks", "meterd status only, for now"),
];

/// Public messages the SDKs do not mirror as a data type, and why. Every message of `meterd.v1` is either in
/// [`TYPES`] or here, so a new message cannot reach the API without a decision about the SDKs.
const NOT_TYPES: &[(&str, &str)] = &[
    ("Customer", "the identity oneof: the SDKs take a tenant id string, an AwsCustomer or a LegacyCustomer"),
    ("RecordUsageRequest", "its one field is the Usage argument of record()"),
    ("RecordUsageResponse", "its one field is the Receipt record() returns"),
    ("RecordUsageBatchRequest", "its one field is the list of Usage record_batch() takes"),
    ("RecordUsageBatchResponse", "its one field is the list of results record_batch() returns"),
    ("EventResult", "a Receipt, or an EventError raised/returned as a MeterdError (checked below)"),
    ("EventError", "a MeterdError: code → the error class, field → .field, message → the error's message"),
    ("StatusRequest", "no fields"),
    ("FlushRequest", "no fields"),
    ("ReportRequest", "no fields"),
    ("ReportStreamRequest", "its fields are report_stream()'s / reportStream()'s options"),
    ("ReportChunk", "the stream's envelope: the SDK streams yield its rows or groups and keep its trailer"),
    ("ReportRows", "a page of ReportRow inside a ReportChunk: the SDK streams yield the rows one by one"),
    ("ReportGroups", "a page of ReportGroup inside a ReportChunk: the SDK streams yield the groups one by one"),
    ("RepackRequest", "no fields; repack is an operator command (meterd repack), not an SDK call"),
    ("RepackResponse", "repack is an operator command (meterd repack), not an SDK call"),
    ("SubmissionPolicy", "StatusResponse.policy: for tooling (meterd import), not exposed by the SDKs"),
    ("DeploymentCheck", "StatusResponse.deployment_checks: meterd status only, for now"),
    ("PutCustomerRequest", "its fields are put_customer()'s arguments"),
    ("GetCustomerRequest", "its one field is get_customer()'s tenant_id argument"),
    ("ListCustomersRequest", "no fields"),
    ("ListCustomersResponse", "its one field is the list of CustomerInfo list_customers() returns"),
    ("RemoveCustomerRequest", "its one field is remove_customer()'s tenant_id argument"),
    ("RemoveCustomerResponse", "its one field is the bool remove_customer() returns"),
    ("ResolveCustomerRequest", "its fields are resolve_customer()'s arguments"),
    ("ApplyEventRequest", "its one field is apply_event()'s JSON argument"),
    ("ReinstateCustomerRequest", "an operator command (meterd customers reinstate), not an SDK call"),
    ("ReinstateCustomerResponse", "an operator command (meterd customers reinstate), not an SDK call"),
];

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Property names of `class NAME` in a `.pyi` file: every `def x(self` in its body.
fn python_fields(pyi: &str, class: &str) -> BTreeSet<String> {
    let start = pyi.find(&format!("\nclass {class}:")).unwrap_or_else(|| panic!("class {class} not in the .pyi"));
    let body = &pyi[start + 1..];
    let end = body[1..].find("\nclass ").map_or(body.len(), |e| e + 1);
    let mut names = BTreeSet::new();
    for line in body[..end].lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("def ").or_else(|| line.strip_prefix("async def ")) {
            names.insert(rest.split('(').next().unwrap().to_string());
        }
        // Constructor keyword arguments (one per line: `dimension: str,`) count as fields too.
        let ident: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !ident.is_empty() && line[ident.len()..].starts_with(": ") {
            names.insert(ident);
        }
    }
    names
}

/// Property names of `export interface NAME { ... }` in a `.d.ts` file.
fn node_fields(dts: &str, iface: &str) -> BTreeSet<String> {
    let start = dts
        .find(&format!("export interface {iface} {{"))
        .unwrap_or_else(|| panic!("interface {iface} not in index.d.ts"));
    let body = &dts[start..];
    let body = &body[..body.find("\n}").expect("interface end")];
    body.lines()
        .skip(1)
        .filter_map(|l| {
            let l = l.trim();
            let name: String = l.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (!name.is_empty() && l[name.len()..].trim_start().starts_with(['?', ':'])).then_some(name)
        })
        .collect()
}

#[test]
fn every_proto_field_is_in_both_sdks_typings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let pyi = std::fs::read_to_string(root.join("sdk-python/python/meterd/_native.pyi")).unwrap();
    let dts = std::fs::read_to_string(root.join("sdk-node/index.d.ts")).unwrap();
    let set = prost_types::FileDescriptorSet::decode(meterd_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let messages: Vec<_> =
        set.file.iter().filter(|f| f.package() == "meterd.v1").flat_map(|f| f.message_type.iter()).collect();
    let mut missing = Vec::new();
    for (proto, py_class, node_iface) in TYPES {
        let m = messages.iter().find(|m| m.name() == *proto).unwrap_or_else(|| panic!("no message {proto}"));
        let (py, node) = (python_fields(&pyi, py_class), node_fields(&dts, node_iface));
        for f in &m.field {
            let name = f.name();
            if EXCEPTIONS.iter().any(|(p, n, _)| p == proto && *n == name) {
                continue;
            }
            if !py.contains(name) {
                missing.push(format!("Python {py_class}.{name} (proto {proto})"));
            }
            if !node.contains(&camel(name)) {
                missing.push(format!("Node {node_iface}.{} (proto {proto})", camel(name)));
            }
        }
    }
    assert!(missing.is_empty(), "fields missing from the SDK typings:\n  {}", missing.join("\n  "));
}

#[test]
fn every_public_message_is_mirrored_or_explained() {
    let set = prost_types::FileDescriptorSet::decode(meterd_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let names: BTreeSet<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "meterd.v1")
        .flat_map(|f| f.message_type.iter().map(|m| m.name().to_string()))
        .collect();
    let decided: BTreeSet<String> =
        TYPES.iter().map(|t| t.0.to_string()).chain(NOT_TYPES.iter().map(|t| t.0.to_string())).collect();
    let undecided: Vec<_> = names.difference(&decided).collect();
    assert!(
        undecided.is_empty(),
        "messages neither mirrored by the SDKs (TYPES) nor explained (NOT_TYPES): {undecided:?}"
    );
    let stale: Vec<_> = decided.difference(&names).collect();
    assert!(stale.is_empty(), "TYPES/NOT_TYPES name messages the API no longer has: {stale:?}");
    // EventError's fields reach callers on both SDKs' error type.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dts = std::fs::read_to_string(root.join("sdk-node/index.d.ts")).unwrap();
    let err = &dts[dts.find("export class MeterdError").expect("MeterdError in index.d.ts")..];
    let err = &err[..err.find("\n}").unwrap()];
    for member in ["readonly code:", "readonly field:", "readonly grpcCode:"] {
        assert!(err.contains(member), "Node MeterdError lacks {member}");
    }
    let py = std::fs::read_to_string(root.join("sdk-python/python/meterd/errors.py")).unwrap();
    for member in ["code: str", "self.field = field", "self.grpc_code = grpc_code", "self.message = message"] {
        assert!(py.contains(member), "Python MeterdError lacks {member}");
    }
}

#[test]
fn the_parsers_see_fields() {
    let pyi =
        "@final\nclass A:\n    @property\n    def x_y(self) -> int: ...\n@final\nclass B:\n    def z(self): ...\n";
    assert_eq!(python_fields(pyi, "A"), BTreeSet::from(["x_y".to_string()]));
    let init =
        "\nclass U:\n    def __init__(\n        self,\n        *,\n        dimension: str,\n    ) -> None: ...\n";
    assert_eq!(python_fields(init, "U"), BTreeSet::from(["__init__".to_string(), "dimension".to_string()]));
    let dts = "export interface A {\n  xY: number;\n  /** doc */\n  z?: string | null;\n}\n";
    assert_eq!(node_fields(dts, "A"), BTreeSet::from(["xY".to_string(), "z".to_string()]));
    assert_eq!(camel("compacted_records"), "compactedRecords");
}
