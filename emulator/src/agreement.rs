//! The Marketplace Agreement API's `DescribeAgreement`, answered from the emulator's own state so meterd's
//! confirmation of end-of-subscription events is tested end to end with the real SDK.
//!
//! The SDK speaks Smithy RPC v2 CBOR: `POST /service/AWSMPCommerceService_v20200301/operation/DescribeAgreement`
//! with a CBOR map `{agreementId}`; answers are CBOR maps, errors carry `__type` and `message`.
//! Agreements named by registration tokens start `ACTIVE`; `PUT /_emulator/agreements` sets any status.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;

use crate::Emulator;

pub const PATH: &str = "/service/AWSMPCommerceService_v20200301/operation/DescribeAgreement";

/// Statuses AWS documents for an agreement.
pub const STATUSES: &[&str] =
    &["ACTIVE", "ARCHIVED", "CANCELLED", "EXPIRED", "RENEWED", "REPLACED", "ROLLED_BACK", "SUPERSEDED", "TERMINATED"];

fn cbor_response(status: StatusCode, fields: &[(&str, &str)], request_id: &str) -> Response {
    let mut e = minicbor::Encoder::new(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = e.map(fields.len() as u64);
    for (k, v) in fields {
        let _ = e.str(k).and_then(|e| e.str(v));
    }
    let mut r = Response::new(Body::from(e.into_writer()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, "application/cbor".parse().expect("static"));
    h.insert("smithy-protocol", "rpc-v2-cbor".parse().expect("static"));
    if let Ok(v) = request_id.parse() {
        h.insert("x-amzn-requestid", v);
    }
    r
}

fn error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    cbor_response(status, &[("__type", code), ("message", message)], request_id)
}

/// The `agreementId` of a request body (a CBOR map; other keys are skipped).
fn agreement_id(body: &[u8]) -> Result<Option<String>, String> {
    let mut d = minicbor::Decoder::new(body);
    let n = d.map().map_err(|e| format!("body is not a CBOR map: {e}"))?;
    let mut id = None;
    let mut seen = 0u64;
    while n.is_none_or(|n| seen < n) {
        if n.is_none() && d.datatype().map_err(|e| e.to_string())? == minicbor::data::Type::Break {
            break;
        }
        let k = d.str().map_err(|e| format!("map key: {e}"))?;
        if k == "agreementId" {
            id = Some(d.str().map_err(|e| format!("agreementId: {e}"))?.to_string());
        } else {
            d.skip().map_err(|e| e.to_string())?;
        }
        seen += 1;
    }
    Ok(id)
}

pub(crate) async fn describe_agreement(State(emu): State<Emulator>, body: Bytes) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let id = match agreement_id(&body) {
        Ok(Some(id)) if !id.is_empty() => id,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "ValidationException", "agreementId is required", &request_id),
        Err(e) => return error(StatusCode::BAD_REQUEST, "ValidationException", &e, &request_id),
    };
    let status = emu.agreement_status(&id);
    match status {
        Some(s) => cbor_response(
            StatusCode::OK,
            &[("agreementId", &id), ("agreementType", "PurchaseAgreement"), ("status", &s)],
            &request_id,
        ),
        None => error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            &format!("Agreement {id} not found"),
            &request_id,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agreement_id_from_definite_and_indefinite_maps() {
        let mut e = minicbor::Encoder::new(Vec::new());
        e.map(2).unwrap().str("other").unwrap().u64(7).unwrap().str("agreementId").unwrap().str("agmt-1").unwrap();
        assert_eq!(agreement_id(&e.into_writer()).unwrap().as_deref(), Some("agmt-1"));
        let mut e = minicbor::Encoder::new(Vec::new());
        e.begin_map().unwrap().str("agreementId").unwrap().str("agmt-2").unwrap().end().unwrap();
        assert_eq!(agreement_id(&e.into_writer()).unwrap().as_deref(), Some("agmt-2"));
        assert!(agreement_id(b"\x01").is_err());
    }
}
