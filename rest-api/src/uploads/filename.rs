//! The client's file name, which is for display only.
//!
//! Storage keys are generated (`{uploader}/{id}`), so a name never reaches a path; it
//! is still cleaned, because it is shown to other members and echoed into a
//! `Content-Disposition` header: path components (`../../etc/passwd` → `passwd`),
//! control characters (header injection, terminal escapes) and bidirectional
//! overrides (`photo\u{202E}gpj.exe` displays as `photoexe.jpg`) are removed.

/// Longest stored name, in bytes of UTF-8.
pub const MAX_FILENAME_BYTES: usize = 255;

/// The display name to store, or `None` when nothing usable is left.
pub fn sanitize(raw: &str) -> Option<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() || trimmed.chars().all(|c| c == '.') {
        return None;
    }
    Some(truncate(trimmed, MAX_FILENAME_BYTES).to_owned())
}

/// Characters that reorder how the text around them is displayed.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `Content-Disposition: attachment` naming the download, in both forms browsers read:
/// a quoted ASCII fallback (quotes, backslashes and non-ASCII replaced) and the exact
/// name percent-encoded as UTF-8 (RFC 6266 / RFC 8187).
pub fn content_disposition(name: &str) -> String {
    disposition("attachment", name)
}

/// `Content-Disposition: inline`, for the few types a browser may show in place.
pub fn inline_disposition(name: &str) -> String {
    disposition("inline", name)
}

fn disposition(kind: &str, name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components_and_controls_are_removed() {
        assert_eq!(sanitize("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(sanitize("..\\..\\boot.ini").as_deref(), Some("boot.ini"));
        assert_eq!(
            sanitize("a\r\nSet-Cookie: x").as_deref(),
            Some("aSet-Cookie: x")
        );
        assert_eq!(
            sanitize("photo\u{202E}gpj.exe").as_deref(),
            Some("photogpj.exe")
        );
        assert_eq!(sanitize("  report.pdf ").as_deref(), Some("report.pdf"));
        for empty in ["", "..", "dir/", "/", " . ", "\u{7}"] {
            assert_eq!(sanitize(empty), None, "{empty:?}");
        }
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let long = "é".repeat(200);
        let s = sanitize(&long).unwrap();
        assert!(s.len() <= MAX_FILENAME_BYTES);
        assert_eq!(s.len(), 254);
    }

    #[test]
    fn disposition_is_safely_quoted() {
        assert_eq!(
            content_disposition("a \"b\".pdf"),
            "attachment; filename=\"a _b_.pdf\"; filename*=UTF-8''a%20%22b%22.pdf"
        );
        assert_eq!(
            content_disposition("ünï.txt"),
            "attachment; filename=\"_n_.txt\"; filename*=UTF-8''%C3%BCn%C3%AF.txt"
        );
    }
}
