//! What an upload really is, decided from its first bytes rather than from what the
//! client declared.
//!
//! The declared `Content-Type` is only a hint: a file served back to other members
//! with a type the server never checked is how a "picture" becomes an HTML page or an
//! executable. So the type is sniffed (crate `infer`) and only an allow-list of media
//! and document types is accepted; the declared type is consulted only to choose
//! between readings of the same container (a WebM or MP4 holding only audio, an
//! Office file that `infer` sees as a plain ZIP) and for plain text, which has no
//! magic bytes at all and is accepted only when the whole body is valid UTF-8.

/// How many leading bytes the sniffer wants. Most signatures sit in the first few
/// bytes, but telling DOCX, XLSX and PPTX apart means walking the first ZIP entries,
/// which `infer` does within roughly the first 13 KiB.
pub const SNIFF_LEN: usize = 64 * 1024;

/// An accepted type: what the attachment is stored and served as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub mime: &'static str,
    /// File extension for a download that has no client-given name.
    pub ext: &'static str,
}

/// The verdict on an upload's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A recognised, allowed binary format.
    Binary(Accepted),
    /// No signature, declared as text: acceptable only if the whole body turns out to
    /// be valid UTF-8 without NUL bytes (see [`Utf8Check`]).
    Text(Accepted),
    /// Not on the allow-list (or unrecognisable and not declared as text).
    Unsupported,
}

const fn t(mime: &'static str, ext: &'static str) -> Accepted {
    Accepted { mime, ext }
}

const JPEG: Accepted = t("image/jpeg", "jpg");
const PNG: Accepted = t("image/png", "png");
const GIF: Accepted = t("image/gif", "gif");
const WEBP: Accepted = t("image/webp", "webp");
const HEIC: Accepted = t("image/heic", "heic");
const HEIF: Accepted = t("image/heif", "heif");
const MP3: Accepted = t("audio/mpeg", "mp3");
const M4A: Accepted = t("audio/mp4", "m4a");
const AAC: Accepted = t("audio/aac", "aac");
const OGG: Accepted = t("audio/ogg", "ogg");
const WAV: Accepted = t("audio/wav", "wav");
const WEBM_AUDIO: Accepted = t("audio/webm", "weba");
const MP4: Accepted = t("video/mp4", "mp4");
const WEBM: Accepted = t("video/webm", "webm");
const MOV: Accepted = t("video/quicktime", "mov");
const PDF: Accepted = t("application/pdf", "pdf");
const DOCX: Accepted = t(
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "docx",
);
const XLSX: Accepted = t(
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "xlsx",
);
const PPTX: Accepted = t(
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "pptx",
);
const TEXT: Accepted = t("text/plain", "txt");
const CSV: Accepted = t("text/csv", "csv");

/// Every type an attachment can have.
pub const ALLOWED: [Accepted; 21] = [
    JPEG, PNG, GIF, WEBP, HEIC, HEIF, MP3, M4A, AAC, OGG, WAV, WEBM_AUDIO, MP4, WEBM, MOV, PDF,
    DOCX, XLSX, PPTX, TEXT, CSV,
];

const OOXML: [Accepted; 3] = [DOCX, XLSX, PPTX];

/// The usual extension of an allowed type (for a download without a name).
pub fn extension(mime: &str) -> &'static str {
    ALLOWED
        .iter()
        .find(|a| a.mime == mime)
        .map_or("bin", |a| a.ext)
}

/// The bare, lower-cased media type of a `Content-Type` value (no parameters).
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Classifies an upload from its first bytes (`prefix`, up to [`SNIFF_LEN`]) and the
/// client's declared type (already reduced with [`essence`]; empty when absent).
pub fn classify(prefix: &[u8], declared: &str) -> Sniffed {
    let declared_audio = declared.starts_with("audio/");
    let sniffed = infer::get(prefix).map(|k| k.mime_type());
    let accepted = match sniffed {
        Some("image/jpeg") => JPEG,
        Some("image/png") => PNG,
        Some("image/gif") => GIF,
        Some("image/webp") => WEBP,
        // `infer` calls every HEIC "image/heif"; keep the client's more precise name.
        Some("image/heif") if declared == "image/heic" => HEIC,
        Some("image/heif") => HEIF,
        Some("audio/mpeg") => MP3,
        Some("audio/m4a") => M4A,
        Some("audio/aac") => AAC,
        // Voice notes: Opus (or Vorbis) in an Ogg container, served as the container.
        Some("audio/opus" | "audio/ogg") => OGG,
        Some("audio/x-wav") => WAV,
        // MP4 and WebM are containers; a browser's recorder makes audio-only ones.
        Some("video/mp4" | "video/x-m4v") if declared_audio => M4A,
        Some("video/mp4" | "video/x-m4v") => MP4,
        Some("video/webm") if declared_audio => WEBM_AUDIO,
        Some("video/webm") => WEBM,
        Some("video/quicktime") => MOV,
        Some("application/pdf") => PDF,
        Some(m) if OOXML.iter().any(|o| o.mime == m) => {
            OOXML.into_iter().find(|o| o.mime == m).unwrap_or(DOCX)
        }
        // `infer` only recognises OOXML whose first entries come in Word's order; other
        // writers produce a valid document it calls a ZIP. A ZIP is accepted as Office
        // only when declared so; a bare ZIP archive is not on the list.
        Some("application/zip") => match OOXML.into_iter().find(|o| o.mime == declared) {
            Some(o) => o,
            None => return Sniffed::Unsupported,
        },
        Some(_) => return Sniffed::Unsupported,
        None if is_mpeg_audio_frame(prefix) => MP3,
        None => {
            return match declared {
                "text/plain" => Sniffed::Text(TEXT),
                "text/csv" => Sniffed::Text(CSV),
                _ => Sniffed::Unsupported,
            }
        }
    };
    Sniffed::Binary(accepted)
}

/// An MP3 without an ID3 tag starts with an MPEG audio frame header: 11 sync bits,
/// then version and layer. `infer` knows only the MPEG-1 no-CRC form (`FF FB`); this
/// accepts every version of Layer III (`FF E2`–`FF FB` with the layer bits `01`).
fn is_mpeg_audio_frame(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf[0] == 0xFF && buf[1] & 0xE0 == 0xE0 && buf[1] & 0x06 == 0x02
}

/// Incremental UTF-8 validation of a body that arrives in arbitrary chunks (a
/// multi-byte character may straddle two chunks), so text can be checked without
/// holding it whole. NUL is refused too: no text file contains it, most binaries do.
#[derive(Debug, Default)]
pub struct Utf8Check {
    /// The unfinished tail of the previous chunk (at most 3 bytes).
    carry: Vec<u8>,
    failed: bool,
}

impl Utf8Check {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        if chunk.contains(&0) {
            self.failed = true;
            return;
        }
        let mut rest = chunk;
        // Complete the character the previous chunk ended inside, one byte at a time.
        while !self.carry.is_empty() && !rest.is_empty() {
            self.carry.push(rest[0]);
            rest = &rest[1..];
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_some() => {
                    self.failed = true;
                    return;
                }
                Err(_) => {}
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => {}
            // Only an incomplete sequence at the very end may wait for the next chunk.
            Err(e) if e.error_len().is_none() => self.carry = rest[e.valid_up_to()..].to_vec(),
            Err(_) => self.failed = true,
        }
    }

    /// True when everything fed was UTF-8 and did not stop mid-character.
    pub fn finish(&self) -> bool {
        !self.failed && self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89,
        ]);
        b
    }

    fn mime(s: Sniffed) -> &'static str {
        match s {
            Sniffed::Binary(a) | Sniffed::Text(a) => a.mime,
            Sniffed::Unsupported => "unsupported",
        }
    }

    #[test]
    fn the_type_comes_from_the_bytes_not_the_declaration() {
        assert_eq!(mime(classify(&png(), "application/pdf")), "image/png");
        assert_eq!(
            mime(classify(b"%PDF-1.7\n", "image/png")),
            "application/pdf"
        );
        assert_eq!(
            mime(classify(
                b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
                "image/png"
            )),
            "unsupported"
        );
        assert_eq!(
            mime(classify(b"<html><body>hi", "text/plain")),
            "unsupported"
        );
        assert_eq!(
            mime(classify(b"PK\x03\x04rest-of-zip", "application/zip")),
            "unsupported"
        );
    }

    #[test]
    fn containers_follow_the_declared_kind() {
        let mut webm = vec![0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81, 0x01];
        webm.extend_from_slice(b"\x42\xF7\x81\x01\x42\xF2\x81\x04\x42\xF3\x81\x08\x42\x82\x84webm");
        assert_eq!(mime(classify(&webm, "audio/webm")), "audio/webm");
        assert_eq!(mime(classify(&webm, "video/webm")), "video/webm");
        let zip = b"PK\x03\x04rest-of-zip";
        let docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
        assert_eq!(mime(classify(zip, docx)), docx);
    }

    #[test]
    fn text_needs_a_text_declaration() {
        assert_eq!(classify(b"a,b\n1,2\n", "text/csv"), Sniffed::Text(CSV));
        assert_eq!(mime(classify(b"hello", "")), "unsupported");
        assert_eq!(
            mime(classify(b"hello", "application/octet-stream")),
            "unsupported"
        );
    }

    #[test]
    fn utf8_check_spans_chunks() {
        let text = "héllo wörld ✓ 😀".as_bytes();
        for split in 0..text.len() {
            let mut c = Utf8Check::default();
            c.feed(&text[..split]);
            c.feed(&text[split..]);
            assert!(c.finish(), "split at {split}");
        }
        let mut c = Utf8Check::default();
        c.feed(&text[..text.len() - 1]);
        assert!(!c.finish(), "cut mid-character");
        let mut c = Utf8Check::default();
        c.feed(b"ok\xffno");
        assert!(!c.finish());
        let mut c = Utf8Check::default();
        c.feed(b"nul\0byte");
        assert!(!c.finish());
    }
}
