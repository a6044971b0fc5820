//! Display names people choose for themselves: shown next to every message they send,
//! so they must not be able to pose as someone else with invisible or reordering
//! characters.
//!
//! A name is trimmed and put in Unicode NFC (one spelling per visible name, so two
//! look-alike byte sequences compare equal), and refused when it holds control
//! characters (C0, C1, DEL), bidirectional formatting characters (embeddings,
//! overrides, isolates and marks: they can reverse how the rest of a line reads, the
//! classic "evil\u{202E}gpj.exe"), or invisible characters that make two names look the
//! same (zero-width spaces and joiners outside emoji sequences, the BOM, …), or when it
//! is longer than [`DISPLAY_NAME_MAX_CHARS`] characters.

use unicode_normalization::UnicodeNormalization;

use crate::error::ApiError;

/// Characters (Unicode scalar values, after NFC), not bytes: a limit in bytes would
/// give a Latin name four times the room of a CJK one.
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;

/// Why a display name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLong,
    Control(char),
    Bidi(char),
    Invisible(char),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooLong => write!(
                f,
                "display_name must be at most {DISPLAY_NAME_MAX_CHARS} characters"
            ),
            Refusal::Control(c) => write!(
                f,
                "display_name must not contain control characters (found U+{:04X})",
                u32::from(*c)
            ),
            Refusal::Bidi(c) => write!(
                f,
                "display_name must not contain bidirectional formatting characters (found U+{:04X})",
                u32::from(*c)
            ),
            Refusal::Invisible(c) => write!(
                f,
                "display_name must not contain invisible characters (found U+{:04X})",
                u32::from(*c)
            ),
        }
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c,
        '\u{061C}'                // Arabic letter mark
        | '\u{200E}' | '\u{200F}' // LRM, RLM
        | '\u{202A}'..='\u{202E}' // LRE, RLE, PDF, LRO, RLO
        | '\u{2066}'..='\u{2069}' // LRI, RLI, FSI, PDI
    )
}

/// Invisible format characters that let two different names render the same. ZWJ
/// (U+200D) stays allowed: emoji sequences such as 👩‍💻 need it.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'                // soft hyphen
        | '\u{180E}'              // Mongolian vowel separator
        | '\u{200B}' | '\u{200C}' // zero-width space, non-joiner
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{FEFF}'              // BOM / zero-width no-break space
        | '\u{FFF9}'..='\u{FFFB}' // interlinear annotations
    )
}

/// The name to store: trimmed and NFC; `None` for an absent or blank one.
pub fn normalize(raw: Option<&str>) -> Result<Option<String>, Refusal> {
    let Some(raw) = raw else { return Ok(None) };
    let name: String = raw.trim().nfc().collect();
    if name.is_empty() {
        return Ok(None);
    }
    for c in name.chars() {
        if c.is_control() {
            return Err(Refusal::Control(c));
        }
        if is_bidi_control(c) {
            return Err(Refusal::Bidi(c));
        }
        if is_invisible(c) {
            return Err(Refusal::Invisible(c));
        }
    }
    if name.chars().count() > DISPLAY_NAME_MAX_CHARS {
        return Err(Refusal::TooLong);
    }
    Ok(Some(name))
}

/// [`normalize`] with its refusal as the API's 422 `invalid_display_name`.
pub fn check(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    normalize(raw).map_err(|r| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_display_name",
            r.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_composed() {
        // "é" as e + combining acute becomes the single precomposed character.
        assert_eq!(
            normalize(Some("  Rene\u{0301}e ")),
            Ok(Some("Ren\u{00E9}e".to_owned()))
        );
        assert_eq!(normalize(Some("   ")), Ok(None));
        assert_eq!(normalize(None), Ok(None));
        assert_eq!(
            normalize(Some("👩\u{200D}💻 Ada")),
            Ok(Some("👩\u{200D}💻 Ada".into()))
        );
        assert_eq!(normalize(Some("李小龍")), Ok(Some("李小龍".into())));
    }

    #[test]
    fn spoofing_characters_are_refused() {
        assert_eq!(
            normalize(Some("admin\u{202E}nimda")),
            Err(Refusal::Bidi('\u{202E}'))
        );
        assert_eq!(
            normalize(Some("a\u{2067}b")),
            Err(Refusal::Bidi('\u{2067}'))
        );
        assert_eq!(
            normalize(Some("bob\u{0007}")),
            Err(Refusal::Control('\u{0007}'))
        );
        assert_eq!(normalize(Some("line\nbreak")), Err(Refusal::Control('\n')));
        assert_eq!(
            normalize(Some("c1\u{0085}x")),
            Err(Refusal::Control('\u{0085}'))
        );
        assert_eq!(
            normalize(Some("al\u{200B}ice")),
            Err(Refusal::Invisible('\u{200B}'))
        );
    }

    #[test]
    fn the_limit_counts_characters_after_composition() {
        let max = "é".repeat(DISPLAY_NAME_MAX_CHARS);
        assert!(normalize(Some(&max)).is_ok());
        // Decomposed, the same name is twice as many scalar values before NFC.
        let decomposed = "e\u{0301}".repeat(DISPLAY_NAME_MAX_CHARS);
        assert_eq!(normalize(Some(&decomposed)), Ok(Some(max.clone())));
        assert_eq!(normalize(Some(&format!("{max}x"))), Err(Refusal::TooLong));
    }
}
