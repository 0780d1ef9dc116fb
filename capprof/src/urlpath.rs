//! Path segments in the engine's and the daemon's HTTP APIs: container and
//! image names travel as one percent-encoded segment each.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters is encoded, `/` and `:`
/// included, so that an image name stays one segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `s` as one path segment.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Decodes a percent-encoded segment. Unlike a browser, it refuses a `%`
/// not followed by two hex digits, and bytes that are not UTF-8: a name
/// that came in mangled is an error, not a guess.
pub fn decode_segment(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_whole() {
        assert_eq!(encode_segment("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(
            encode_segment("docker.io/library/nginx:1.27"),
            "docker.io%2Flibrary%2Fnginx%3A1.27"
        );
        assert_eq!(encode_segment("a b?c#d%"), "a%20b%3Fc%23d%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn decoding_refuses_mangled_input() {
        assert_eq!(decode_segment("a%2Fb%3a1").as_deref(), Some("a/b:1"));
        assert_eq!(decode_segment("plain").as_deref(), Some("plain"));
        assert_eq!(decode_segment("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode_segment("%"), None);
        assert_eq!(decode_segment("%4"), None);
        assert_eq!(decode_segment("%+1"), None);
        assert_eq!(decode_segment("%FF"), None);
        for name in ["docker.io/library/nginx:1.27", "a b?c#d%", "é/ü"] {
            assert_eq!(decode_segment(&encode_segment(name)).as_deref(), Some(name));
        }
    }
}
