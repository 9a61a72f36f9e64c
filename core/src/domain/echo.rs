//! Caller values quoted in error messages, bounded.
//!
//! A refusal quotes what the caller sent so they can find it, but a status message travels in an HTTP/2
//! header (`grpc-message`): echoing a 20,000-character value whole pushes it past the client's metadata limit,
//! and the client then sees `RESOURCE_EXHAUSTED` (which standard clients retry forever) instead of
//! `INVALID_ARGUMENT`. So every echoed value goes through [`echo`].

/// Characters of a caller's value quoted before it is cut.
pub const MAX_ECHO_CHARS: usize = 64;

/// `value` quoted (Rust debug escapes, so control characters stay visible); past [`MAX_ECHO_CHARS`]
/// characters it is cut and its full length in bytes follows: `"aaaa…"…(20000 bytes)`. At most ~650 bytes.
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &value[..cut], value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(echo("api_calls"), "\"api_calls\"");
        assert_eq!(echo(&"a".repeat(MAX_ECHO_CHARS)), format!("\"{}\"", "a".repeat(MAX_ECHO_CHARS)));
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary_with_their_length() {
        assert_eq!(echo(&"d".repeat(20_000)), format!("\"{}\"…(20000 bytes)", "d".repeat(MAX_ECHO_CHARS)));
        let wide = "é".repeat(100);
        assert_eq!(echo(&wide), format!("\"{}\"…(200 bytes)", "é".repeat(MAX_ECHO_CHARS)));
        // The worst case (every character escaped as \u{…}) stays small.
        assert!(echo(&"\u{10ffff}".repeat(10_000)).len() < 700);
    }
}
