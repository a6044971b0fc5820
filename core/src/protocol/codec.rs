//! Codecs: JSON (the default, readable) and CBOR (compact, for constrained links).
//!
//! Both carry exactly the same fields, so a payload can be re-encoded without loss.
//! The formats can be told apart from the first byte: a JSON object starts with `{`
//! (0x7B, which CBOR would read as a text string), a CBOR map with 0xA0..=0xBF. That
//! lets the server accept either codec on `u/{me}/out` without negotiation.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::protocol::command::{Command, OP_NAMES};
use crate::protocol::event::Event;
use crate::protocol::limits::MAX_COMMAND_BYTES;
use crate::protocol::PROTOCOL_VERSION;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("payload is {0} bytes; the limit is {MAX_COMMAND_BYTES}")]
    TooLarge(usize),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("protocol version {0} is newer than this server's {PROTOCOL_VERSION}")]
    UnsupportedVersion(u8),
    #[error("could not encode: {0}")]
    Encode(String),
    /// The compact profile named a conversation by a handle the user does not have.
    #[error("no conversation has handle {0}; send `conversations` for the list")]
    UnknownHandle(u32),
}

/// The two wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    #[default]
    Json,
    Cbor,
}

impl WireFormat {
    /// The codec for this format.
    pub fn codec(self) -> &'static dyn Codec {
        match self {
            WireFormat::Json => &JsonCodec,
            WireFormat::Cbor => &CborCodec,
        }
    }

    /// Guesses the format of a payload from its first non-blank byte.
    pub fn sniff(payload: &[u8]) -> WireFormat {
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(0xA0..=0xBF) => WireFormat::Cbor,
            _ => WireFormat::Json,
        }
    }
}

/// Encodes and decodes commands and events in one wire format.
pub trait Codec: Send + Sync {
    fn format(&self) -> WireFormat;
    fn encode_command(&self, cmd: &Command) -> Result<Vec<u8>, CodecError>;
    fn decode_command(&self, payload: &[u8]) -> Result<Command, CodecError>;
    fn encode_event(&self, event: &Event) -> Result<Vec<u8>, CodecError>;
    fn decode_event(&self, payload: &[u8]) -> Result<Event, CodecError>;
}

/// JSON, via serde_json.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

/// CBOR (RFC 8949), via ciborium.
#[derive(Debug, Clone, Copy, Default)]
pub struct CborCodec;

/// Just enough of a command to say why a full decode failed.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    v: Option<u8>,
    #[serde(default)]
    op: Option<String>,
}

/// Decodes a command with `decode`, and on failure names the most useful reason:
/// a too-new version or an unknown op rather than a generic "malformed".
fn decode_command_with(
    payload: &[u8],
    decode: fn(&[u8]) -> Result<Command, String>,
    probe: fn(&[u8]) -> Option<Probe>,
) -> Result<Command, CodecError> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(CodecError::TooLarge(payload.len()));
    }
    let classify = |detail: String| match probe(payload) {
        Some(Probe { v: Some(v), .. }) if v > PROTOCOL_VERSION => CodecError::UnsupportedVersion(v),
        Some(Probe { op: Some(op), .. }) if !OP_NAMES.contains(&op.as_str()) => {
            CodecError::UnknownOp(op)
        }
        _ => CodecError::Malformed(detail),
    };
    let cmd = decode(payload).map_err(classify)?;
    if cmd.v > PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion(cmd.v));
    }
    Ok(cmd)
}

/// The `id` of a command that failed to decode, if it can be read at all, so the
/// error reply can still name the command it answers.
pub fn command_id(payload: &[u8]) -> Option<String> {
    if payload.len() > MAX_COMMAND_BYTES {
        return None;
    }
    let probe: Option<Probe> = match WireFormat::sniff(payload) {
        WireFormat::Json => json_decode(payload).ok(),
        WireFormat::Cbor => cbor_decode(payload).ok(),
    };
    probe
        .and_then(|p| p.id)
        .filter(|id| crate::protocol::ids::is_client_id(id))
}

fn json_decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

fn cbor_decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    ciborium::from_reader(payload).map_err(|e| e.to_string())
}

fn cbor_encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

impl Codec for JsonCodec {
    fn format(&self) -> WireFormat {
        WireFormat::Json
    }
    fn encode_command(&self, cmd: &Command) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(cmd).map_err(|e| CodecError::Encode(e.to_string()))
    }
    fn decode_command(&self, payload: &[u8]) -> Result<Command, CodecError> {
        decode_command_with(payload, json_decode, |p| json_decode(p).ok())
    }
    fn encode_event(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(event).map_err(|e| CodecError::Encode(e.to_string()))
    }
    fn decode_event(&self, payload: &[u8]) -> Result<Event, CodecError> {
        json_decode(payload).map_err(CodecError::Malformed)
    }
}

impl Codec for CborCodec {
    fn format(&self) -> WireFormat {
        WireFormat::Cbor
    }
    fn encode_command(&self, cmd: &Command) -> Result<Vec<u8>, CodecError> {
        cbor_encode(cmd)
    }
    fn decode_command(&self, payload: &[u8]) -> Result<Command, CodecError> {
        decode_command_with(payload, cbor_decode, |p| cbor_decode(p).ok())
    }
    fn encode_event(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        cbor_encode(event)
    }
    fn decode_event(&self, payload: &[u8]) -> Result<Event, CodecError> {
        cbor_decode(payload).map_err(CodecError::Malformed)
    }
}
