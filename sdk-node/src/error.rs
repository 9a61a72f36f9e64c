//! The one place SDK errors become JS errors. A rejected Promise carries `{code, field, message, grpcCode}` as
//! JSON after a fixed prefix; `errors.js` parses it into the matching `MeterdError` subclass.

use meterd_proto::sdk::Error;

pub const PREFIX: &str = "meterd-error:";

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn to_js(e: Error) -> napi::Error {
    let field = e.field().map(escape).unwrap_or_else(|| "null".into());
    let grpc = e.grpc_code().map(|c| c.to_string()).unwrap_or_else(|| "null".into());
    let json = format!(
        "{{\"code\":{},\"field\":{field},\"message\":{},\"grpcCode\":{grpc}}}",
        escape(e.code()),
        escape(e.message())
    );
    napi::Error::new(napi::Status::GenericFailure, format!("{PREFIX}{json}"))
}
