//! The compact profile's codec: CBOR maps with small integer keys, ids as their 16
//! binary bytes, conversations as the user's short handles, and nothing a device can
//! work out itself (`v`, a message's `created_at`, which is the time part of its id,
//! the `client_msg_id` of other people's messages, the `kind` of a text message).
//!
//! It is used on the per-connection short topics `o` (commands) and `i` (events); see
//! docs/PROTOCOL.md §compact for the key tables with byte-exact examples. A "hello"
//! send is a 33-byte PUBLISH and its delivery a 60-byte one, against 100 and 270 in
//! JSON on the long topics.
//!
//! Handles belong to one user, so encoding and decoding need to know whose payload it
//! is: [`Context`].

use ciborium::Value;
use ulid::Ulid;

use crate::protocol::codec::CodecError;
use crate::protocol::command::{Command, Op};
use crate::protocol::event::*;
use crate::protocol::ids::{id_time, is_client_id};
use crate::protocol::limits::MAX_COMMAND_BYTES;
use crate::protocol::PROTOCOL_VERSION;

/// A user's conversation handles.
pub trait Handles {
    fn handle(&self, conv: &str) -> Option<u32>;
    fn conv(&self, handle: u32) -> Option<String>;
}

/// Whose payload this is.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub user: &'a str,
    pub handles: &'a dyn Handles,
}

/// No handles at all: conversations travel as 16-byte ids.
pub struct NoHandles;

impl Handles for NoHandles {
    fn handle(&self, _: &str) -> Option<u32> {
        None
    }
    fn conv(&self, _: u32) -> Option<String> {
        None
    }
}

/// Command keys.
mod ck {
    pub const OP: u8 = 0;
    pub const ID: u8 = 1;
    pub const CONV: u8 = 2;
    pub const BODY: u8 = 3;
    pub const MSG: u8 = 4;
    pub const REPLY_TO: u8 = 5;
    pub const MENTIONS: u8 = 6;
    pub const ATTACHMENT: u8 = 7;
    pub const EMOJI: u8 = 8;
    /// `seq` of delivered/read, `since` of sync.
    pub const SEQ: u8 = 9;
    pub const LIMIT: u8 = 10;
}

/// Event keys. One table for every type; a key keeps its meaning across types.
mod ek {
    pub const TYPE: u8 = 0;
    pub const ISEQ: u8 = 1;
    pub const RE: u8 = 2;
    /// The conversation: the user's handle, or 16 bytes when they have none.
    pub const CONV: u8 = 3;
    /// The event's own id: message, invitation, or a conversation's full id.
    pub const ID: u8 = 4;
    pub const SEQ: u8 = 5;
    /// The acting user: a message's sender, a reaction's or receipt's user, a member.
    pub const USER: u8 = 6;
    /// Text: a message body, an emoji, an error message.
    pub const TEXT: u8 = 7;
    pub const KIND: u8 = 8;
    pub const CLIENT_MSG_ID: u8 = 9;
    pub const REPLY_TO: u8 = 10;
    pub const MENTIONS: u8 = 11;
    pub const ATTACHMENT: u8 = 12;
    pub const CREATED_AT: u8 = 13;
    pub const EDITED_AT: u8 = 14;
    pub const DELETED: u8 = 15;
    pub const ADDED: u8 = 16;
    pub const ROLE: u8 = 17;
    pub const BY: u8 = 18;
    pub const NAME: u8 = 19;
    pub const TOPIC: u8 = 20;
    pub const CODE: u8 = 21;
    pub const EVENTS: u8 = 22;
    pub const NEXT: u8 = 23;
    pub const HAS_MORE: u8 = 24;
    pub const LIST: u8 = 25;
    /// An attachment's MIME type and size (inside its map at ATTACHMENT).
    pub const MIME: u8 = 26;
    pub const SIZE: u8 = 27;
}

const OPS: [&str; 9] = [
    "send",
    "edit",
    "delete",
    "react",
    "unreact",
    "delivered",
    "read",
    "sync",
    "conversations",
];

const TYPES: [&str; 11] = [
    "message",
    "message_updated",
    "reaction",
    "receipt",
    "member",
    "conversation",
    "ack",
    "error",
    "invitation",
    "sync",
    "conversations",
];

const ERROR_CODES: [ErrorCode; 13] = [
    ErrorCode::Malformed,
    ErrorCode::UnknownOp,
    ErrorCode::UnsupportedVersion,
    ErrorCode::Invalid,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::NotMember,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::Unauthorized,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

const KINDS: [MessageKind; 5] = [
    MessageKind::Text,
    MessageKind::Image,
    MessageKind::File,
    MessageKind::Voice,
    MessageKind::System,
];
const ROLES: [Role; 3] = [Role::Owner, Role::Admin, Role::Member];
const ACTIONS: [MemberAction; 4] = [
    MemberAction::Joined,
    MemberAction::Left,
    MemberAction::Removed,
    MemberAction::RoleChanged,
];
const CONV_KINDS: [ConversationKind; 3] = [
    ConversationKind::Direct,
    ConversationKind::Group,
    ConversationKind::Room,
];

fn malformed(what: impl Into<String>) -> CodecError {
    CodecError::Malformed(what.into())
}

fn position<T: PartialEq>(table: &[T], x: &T) -> u64 {
    table.iter().position(|t| t == x).unwrap_or(0) as u64
}

fn pick<T: Copy>(table: &[T], v: u64, what: &str) -> Result<T, CodecError> {
    usize::try_from(v)
        .ok()
        .and_then(|i| table.get(i).copied())
        .ok_or_else(|| malformed(format!("unknown {what} {v}")))
}

/// A map under construction, keys in ascending order as they are put.
#[derive(Default)]
struct MapOut(Vec<(Value, Value)>);

impl MapOut {
    fn put(&mut self, key: u8, value: Value) {
        self.0.push((Value::Integer(key.into()), value));
    }
    fn uint(&mut self, key: u8, n: u64) {
        self.put(key, Value::Integer(n.into()));
    }
    fn text(&mut self, key: u8, s: &str) {
        self.put(key, Value::Text(s.to_owned()));
    }
    fn opt_text(&mut self, key: u8, s: &Option<String>) {
        if let Some(s) = s {
            self.text(key, s);
        }
    }
    fn id(&mut self, key: u8, id: &str) {
        self.put(key, id_value(id));
    }
    fn int(&mut self, key: u8, n: i64) {
        self.put(key, Value::Integer(n.into()));
    }
    fn done(self) -> Value {
        Value::Map(self.0)
    }
}

/// A 26-character ULID as its 16 bytes; anything else (never made by the server) as text.
fn id_value(id: &str) -> Value {
    match Ulid::from_string(id) {
        Ok(u) => Value::Bytes(u.to_bytes().to_vec()),
        Err(_) => Value::Text(id.to_owned()),
    }
}

/// A client-chosen id: a number when it reads as one exactly (`"7"` is 7), else text.
fn client_id_value(id: &str) -> Value {
    match id.parse::<u64>() {
        Ok(n) if n.to_string() == id => Value::Integer(n.into()),
        _ => Value::Text(id.to_owned()),
    }
}

/// A map being read: integer keys only.
struct MapIn(Vec<(u64, Value)>);

impl MapIn {
    fn parse(v: Value) -> Result<MapIn, CodecError> {
        let Value::Map(entries) = v else {
            return Err(malformed("expected a map"));
        };
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let k = uint_of(&k).ok_or_else(|| malformed("map keys must be small integers"))?;
            out.push((k, v));
        }
        Ok(MapIn(out))
    }
    fn get(&self, key: u8) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| *k == u64::from(key))
            .map(|(_, v)| v)
    }
    fn req(&self, key: u8, what: &str) -> Result<&Value, CodecError> {
        self.get(key)
            .ok_or_else(|| malformed(format!("missing {what} (key {key})")))
    }
    fn uint(&self, key: u8, what: &str) -> Result<u64, CodecError> {
        uint_of(self.req(key, what)?).ok_or_else(|| malformed(format!("{what} must be a uint")))
    }
    fn opt_uint(&self, key: u8, what: &str) -> Result<Option<u64>, CodecError> {
        self.get(key)
            .map(|v| uint_of(v).ok_or_else(|| malformed(format!("{what} must be a uint"))))
            .transpose()
    }
    fn int(&self, key: u8, what: &str) -> Result<i64, CodecError> {
        match self.req(key, what)? {
            Value::Integer(i) => {
                i64::try_from(*i).map_err(|_| malformed(format!("{what} out of range")))
            }
            _ => Err(malformed(format!("{what} must be an integer"))),
        }
    }
    fn opt_int(&self, key: u8, what: &str) -> Result<Option<i64>, CodecError> {
        if self.get(key).is_some() {
            self.int(key, what).map(Some)
        } else {
            Ok(None)
        }
    }
    fn text(&self, key: u8, what: &str) -> Result<String, CodecError> {
        match self.req(key, what)? {
            Value::Text(s) => Ok(s.clone()),
            _ => Err(malformed(format!("{what} must be text"))),
        }
    }
    fn opt_text(&self, key: u8, what: &str) -> Result<Option<String>, CodecError> {
        if self.get(key).is_some() {
            self.text(key, what).map(Some)
        } else {
            Ok(None)
        }
    }
    fn bool(&self, key: u8) -> bool {
        matches!(self.get(key), Some(Value::Bool(true)))
    }
    fn id(&self, key: u8, what: &str) -> Result<String, CodecError> {
        id_of(self.req(key, what)?, what)
    }
    fn opt_id(&self, key: u8, what: &str) -> Result<Option<String>, CodecError> {
        self.get(key).map(|v| id_of(v, what)).transpose()
    }
    fn ids(&self, key: u8, what: &str) -> Result<Vec<String>, CodecError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|v| id_of(v, what)).collect(),
            Some(_) => Err(malformed(format!("{what} must be an array"))),
        }
    }
    fn client_id(&self, key: u8, what: &str) -> Result<String, CodecError> {
        match self.req(key, what)? {
            Value::Integer(i) => u64::try_from(*i)
                .map(|n| n.to_string())
                .map_err(|_| malformed(format!("{what} must not be negative"))),
            Value::Text(s) => Ok(s.clone()),
            _ => Err(malformed(format!("{what} must be a uint or text"))),
        }
    }
}

fn uint_of(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// 16 bytes (the binary ULID) or the 26-character text form.
fn id_of(v: &Value, what: &str) -> Result<String, CodecError> {
    match v {
        Value::Bytes(b) => <[u8; 16]>::try_from(b.as_slice())
            .map(|b| Ulid::from_bytes(b).to_string())
            .map_err(|_| malformed(format!("{what} must be 16 bytes"))),
        Value::Text(s) => Ok(s.clone()),
        _ => Err(malformed(format!("{what} must be 16 bytes"))),
    }
}

fn to_bytes(v: &Value) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(v, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

fn from_bytes(payload: &[u8]) -> Result<Value, CodecError> {
    ciborium::from_reader(payload).map_err(|e| malformed(e.to_string()))
}

impl Context<'_> {
    fn conv_value(&self, conv: &str) -> Value {
        match self.handles.handle(conv) {
            Some(h) => Value::Integer(h.into()),
            None => id_value(conv),
        }
    }

    fn conv_of(&self, v: &Value) -> Result<String, CodecError> {
        match v {
            Value::Integer(_) => {
                let h = uint_of(v)
                    .and_then(|h| u32::try_from(h).ok())
                    .ok_or_else(|| malformed("conversation handle out of range"))?;
                self.handles.conv(h).ok_or(CodecError::UnknownHandle(h))
            }
            other => id_of(other, "conv"),
        }
    }

    /// Decodes a command published on the compact outbox `o`.
    pub fn decode_command(&self, payload: &[u8]) -> Result<Command, CodecError> {
        if payload.len() > MAX_COMMAND_BYTES {
            return Err(CodecError::TooLarge(payload.len()));
        }
        let m = MapIn::parse(from_bytes(payload)?)?;
        let op = m.uint(ck::OP, "op")?;
        let id = m.client_id(ck::ID, "id")?;
        let conv = || self.conv_of(m.req(ck::CONV, "conv")?);
        let op = match usize::try_from(op)
            .ok()
            .and_then(|i| OPS.get(i.wrapping_sub(1)))
        {
            Some(&"send") => Op::Send {
                conv: conv()?,
                body: m.opt_text(ck::BODY, "body")?.unwrap_or_default(),
                reply_to: m.opt_id(ck::REPLY_TO, "reply_to")?,
                mentions: m.ids(ck::MENTIONS, "mentions")?,
                attachment: m.opt_id(ck::ATTACHMENT, "attachment")?,
            },
            Some(&"edit") => Op::Edit {
                msg: m.id(ck::MSG, "msg")?,
                body: m.text(ck::BODY, "body")?,
            },
            Some(&"delete") => Op::Delete {
                msg: m.id(ck::MSG, "msg")?,
            },
            Some(&"react") => Op::React {
                msg: m.id(ck::MSG, "msg")?,
                emoji: m.text(ck::EMOJI, "emoji")?,
            },
            Some(&"unreact") => Op::Unreact {
                msg: m.id(ck::MSG, "msg")?,
                emoji: m.text(ck::EMOJI, "emoji")?,
            },
            Some(&"delivered") => Op::Delivered {
                conv: conv()?,
                seq: m.uint(ck::SEQ, "seq")?,
            },
            Some(&"read") => Op::Read {
                conv: conv()?,
                seq: m.uint(ck::SEQ, "seq")?,
            },
            Some(&"sync") => Op::Sync {
                since: m.opt_uint(ck::SEQ, "since")?.unwrap_or(0),
                limit: m
                    .opt_uint(ck::LIMIT, "limit")?
                    .map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
            },
            Some(&"conversations") => Op::Conversations {},
            _ => return Err(CodecError::UnknownOp(op.to_string())),
        };
        Ok(Command {
            v: PROTOCOL_VERSION,
            id,
            op,
        })
    }

    /// Encodes a command for the compact outbox (devices and tests).
    pub fn encode_command(&self, cmd: &Command) -> Result<Vec<u8>, CodecError> {
        let mut m = MapOut::default();
        let name = op_name(&cmd.op);
        m.uint(ck::OP, position(&OPS, &name) + 1);
        m.put(ck::ID, client_id_value(&cmd.id));
        match &cmd.op {
            Op::Send {
                conv,
                body,
                reply_to,
                mentions,
                attachment,
            } => {
                m.put(ck::CONV, self.conv_value(conv));
                if !body.is_empty() {
                    m.text(ck::BODY, body);
                }
                if let Some(r) = reply_to {
                    m.id(ck::REPLY_TO, r);
                }
                if !mentions.is_empty() {
                    m.put(
                        ck::MENTIONS,
                        Value::Array(mentions.iter().map(|x| id_value(x)).collect()),
                    );
                }
                if let Some(a) = attachment {
                    m.id(ck::ATTACHMENT, a);
                }
            }
            Op::Edit { msg, body } => {
                m.text(ck::BODY, body);
                m.id(ck::MSG, msg);
            }
            Op::Delete { msg } => m.id(ck::MSG, msg),
            Op::React { msg, emoji } | Op::Unreact { msg, emoji } => {
                m.id(ck::MSG, msg);
                m.text(ck::EMOJI, emoji);
            }
            Op::Delivered { conv, seq } | Op::Read { conv, seq } => {
                m.put(ck::CONV, self.conv_value(conv));
                m.uint(ck::SEQ, *seq);
            }
            Op::Sync { since, limit } => {
                m.uint(ck::SEQ, *since);
                if let Some(l) = limit {
                    m.uint(ck::LIMIT, u64::from(*l));
                }
            }
            Op::Conversations {} => {}
        }
        to_bytes(&m.done())
    }

    /// Encodes an event for the compact inbox `i` of [`Context::user`].
    pub fn encode_event(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        to_bytes(&self.event_value(event))
    }

    fn event_value(&self, event: &Event) -> Value {
        let mut m = MapOut::default();
        m.uint(ek::TYPE, position(&TYPES, &type_name(&event.body)) + 1);
        if let Some(iseq) = event.seq {
            m.uint(ek::ISEQ, iseq);
        }
        if let Some(re) = &event.re {
            m.put(ek::RE, client_id_value(re));
        }
        match &event.body {
            EventBody::Message(v) | EventBody::MessageUpdated(v) => self.message(&mut m, v),
            EventBody::Reaction(r) => {
                m.put(ek::CONV, self.conv_value(&r.conv));
                m.id(ek::ID, &r.msg);
                m.id(ek::USER, &r.user);
                m.text(ek::TEXT, &r.emoji);
                m.put(ek::ADDED, Value::Bool(r.added));
            }
            EventBody::Receipt(r) => {
                m.put(ek::CONV, self.conv_value(&r.conv));
                m.uint(ek::SEQ, r.seq);
                m.id(ek::USER, &r.user);
                m.uint(ek::KIND, u64::from(r.kind == ReceiptKind::Read));
            }
            EventBody::Member(v) => {
                m.put(ek::CONV, self.conv_value(&v.conv));
                m.id(ek::USER, &v.user);
                m.uint(ek::KIND, position(&ACTIONS, &v.action));
                m.uint(ek::ROLE, position(&ROLES, &v.role));
                if let Some(by) = &v.by {
                    m.id(ek::BY, by);
                }
            }
            EventBody::Conversation(v) => {
                m.put(ek::CONV, self.conv_value(&v.id));
                m.id(ek::ID, &v.id);
                m.uint(ek::KIND, position(&CONV_KINDS, &v.kind));
                m.int(ek::CREATED_AT, v.created_at);
                m.id(ek::BY, &v.created_by);
                m.opt_text(ek::NAME, &v.name);
                m.opt_text(ek::TOPIC, &v.topic);
            }
            EventBody::Ack(a) => {
                if let Some(conv) = &a.conv {
                    m.put(ek::CONV, self.conv_value(conv));
                }
                if let Some(msg) = &a.msg {
                    m.id(ek::ID, msg);
                }
                if let Some(seq) = a.seq {
                    m.uint(ek::SEQ, seq);
                }
            }
            EventBody::Error(e) => {
                m.text(ek::TEXT, &e.message);
                m.uint(ek::CODE, position(&ERROR_CODES, &e.code));
            }
            EventBody::Invitation(v) => {
                m.put(ek::CONV, self.conv_value(&v.conv));
                m.id(ek::ID, &v.id);
                m.int(ek::CREATED_AT, v.created_at);
                m.id(ek::BY, &v.by);
                m.opt_text(ek::NAME, &v.name);
            }
            EventBody::Sync(s) => {
                let events = s.events.iter().map(|e| self.event_value(e)).collect();
                m.put(ek::EVENTS, Value::Array(events));
                m.uint(ek::NEXT, s.next);
                m.put(ek::HAS_MORE, Value::Bool(s.has_more));
            }
            EventBody::Conversations(c) => {
                let list = c
                    .conversations
                    .iter()
                    .map(|e| {
                        let mut x = MapOut::default();
                        x.uint(ek::CONV, u64::from(e.handle));
                        x.id(ek::ID, &e.id);
                        x.uint(ek::KIND, position(&CONV_KINDS, &e.kind));
                        x.opt_text(ek::NAME, &e.name);
                        x.done()
                    })
                    .collect();
                m.put(ek::LIST, Value::Array(list));
            }
        }
        m.done()
    }

    fn message(&self, m: &mut MapOut, v: &MessageView) {
        m.put(ek::CONV, self.conv_value(&v.conv));
        m.id(ek::ID, &v.id);
        m.uint(ek::SEQ, v.seq);
        m.id(ek::USER, &v.sender);
        if !v.body.is_empty() {
            m.text(ek::TEXT, &v.body);
        }
        if v.kind != MessageKind::Text {
            m.uint(ek::KIND, position(&KINDS, &v.kind));
        }
        // Only the sender's devices match replies to their outbox by it.
        if v.sender == self.user {
            m.put(ek::CLIENT_MSG_ID, client_id_value(&v.client_msg_id));
        }
        if let Some(r) = &v.reply_to {
            m.id(ek::REPLY_TO, r);
        }
        if !v.mentions.is_empty() {
            m.put(
                ek::MENTIONS,
                Value::Array(v.mentions.iter().map(|x| id_value(x)).collect()),
            );
        }
        if let Some(a) = &v.attachment {
            let mut x = MapOut::default();
            x.id(ek::ID, &a.id);
            x.opt_text(ek::NAME, &a.name);
            x.text(ek::MIME, &a.mime);
            x.uint(ek::SIZE, a.size);
            m.put(ek::ATTACHMENT, x.done());
        }
        if id_time(&v.id) != Some(v.created_at) {
            m.int(ek::CREATED_AT, v.created_at);
        }
        if let Some(at) = v.edited_at {
            m.int(ek::EDITED_AT, at);
        }
        if v.deleted {
            m.put(ek::DELETED, Value::Bool(true));
        }
    }

    /// Decodes an event from the compact inbox (devices and tests).
    pub fn decode_event(&self, payload: &[u8]) -> Result<Event, CodecError> {
        self.event_of(from_bytes(payload)?)
    }

    fn event_of(&self, v: Value) -> Result<Event, CodecError> {
        let m = MapIn::parse(v)?;
        let ty = m.uint(ek::TYPE, "type")?;
        let name = usize::try_from(ty)
            .ok()
            .and_then(|i| TYPES.get(i.wrapping_sub(1)))
            .ok_or_else(|| malformed(format!("unknown type {ty}")))?;
        let seq = m.opt_uint(ek::ISEQ, "iseq")?;
        let re = if m.get(ek::RE).is_some() {
            Some(m.client_id(ek::RE, "re")?)
        } else {
            None
        };
        let conv = || self.conv_of(m.req(ek::CONV, "conv")?);
        let body = match *name {
            "message" => EventBody::Message(self.message_of(&m)?),
            "message_updated" => EventBody::MessageUpdated(self.message_of(&m)?),
            "reaction" => EventBody::Reaction(ReactionView {
                conv: conv()?,
                msg: m.id(ek::ID, "msg")?,
                user: m.id(ek::USER, "user")?,
                emoji: m.text(ek::TEXT, "emoji")?,
                added: m.bool(ek::ADDED),
            }),
            "receipt" => EventBody::Receipt(ReceiptView {
                conv: conv()?,
                user: m.id(ek::USER, "user")?,
                kind: if m.uint(ek::KIND, "kind")? == 1 {
                    ReceiptKind::Read
                } else {
                    ReceiptKind::Delivered
                },
                seq: m.uint(ek::SEQ, "seq")?,
            }),
            "member" => EventBody::Member(MemberView {
                conv: conv()?,
                user: m.id(ek::USER, "user")?,
                action: pick(&ACTIONS, m.uint(ek::KIND, "action")?, "action")?,
                role: pick(&ROLES, m.uint(ek::ROLE, "role")?, "role")?,
                by: m.opt_id(ek::BY, "by")?,
            }),
            "conversation" => EventBody::Conversation(ConversationView {
                id: m.id(ek::ID, "id")?,
                kind: pick(&CONV_KINDS, m.uint(ek::KIND, "kind")?, "kind")?,
                name: m.opt_text(ek::NAME, "name")?,
                topic: m.opt_text(ek::TOPIC, "topic")?,
                created_by: m.id(ek::BY, "created_by")?,
                created_at: m.int(ek::CREATED_AT, "created_at")?,
            }),
            "ack" => EventBody::Ack(AckView {
                conv: m.get(ek::CONV).map(|v| self.conv_of(v)).transpose()?,
                msg: m.opt_id(ek::ID, "msg")?,
                seq: m.opt_uint(ek::SEQ, "seq")?,
            }),
            "error" => EventBody::Error(ErrorView {
                code: pick(&ERROR_CODES, m.uint(ek::CODE, "code")?, "code")?,
                message: m.opt_text(ek::TEXT, "message")?.unwrap_or_default(),
            }),
            "invitation" => EventBody::Invitation(InvitationView {
                id: m.id(ek::ID, "id")?,
                conv: conv()?,
                name: m.opt_text(ek::NAME, "name")?,
                by: m.id(ek::BY, "by")?,
                created_at: m.int(ek::CREATED_AT, "created_at")?,
            }),
            "sync" => {
                let events = match m.req(ek::EVENTS, "events")? {
                    Value::Array(items) => items
                        .iter()
                        .map(|e| self.event_of(e.clone()))
                        .collect::<Result<_, _>>()?,
                    _ => return Err(malformed("events must be an array")),
                };
                EventBody::Sync(SyncView {
                    events,
                    next: m.uint(ek::NEXT, "next")?,
                    has_more: m.bool(ek::HAS_MORE),
                })
            }
            _ => {
                let Value::Array(items) = m.req(ek::LIST, "conversations")? else {
                    return Err(malformed("conversations must be an array"));
                };
                let mut conversations = Vec::with_capacity(items.len());
                for item in items {
                    let x = MapIn::parse(item.clone())?;
                    conversations.push(ConversationEntry {
                        id: x.id(ek::ID, "id")?,
                        handle: u32::try_from(x.uint(ek::CONV, "handle")?)
                            .map_err(|_| malformed("handle out of range"))?,
                        kind: pick(&CONV_KINDS, x.uint(ek::KIND, "kind")?, "kind")?,
                        name: x.opt_text(ek::NAME, "name")?,
                    });
                }
                EventBody::Conversations(ConversationsView { conversations })
            }
        };
        Ok(Event {
            v: PROTOCOL_VERSION,
            seq,
            re,
            body,
        })
    }

    fn message_of(&self, m: &MapIn) -> Result<MessageView, CodecError> {
        let id = m.id(ek::ID, "id")?;
        let created_at = match m.opt_int(ek::CREATED_AT, "created_at")? {
            Some(at) => at,
            None => id_time(&id).ok_or_else(|| malformed("id is not a ULID"))?,
        };
        let attachment = match m.get(ek::ATTACHMENT) {
            None => None,
            Some(v) => {
                let x = MapIn::parse(v.clone())?;
                Some(AttachmentView {
                    id: x.id(ek::ID, "attachment id")?,
                    mime: x.text(ek::MIME, "mime")?,
                    size: x.uint(ek::SIZE, "size")?,
                    name: x.opt_text(ek::NAME, "name")?,
                })
            }
        };
        let sender = m.id(ek::USER, "sender")?;
        Ok(MessageView {
            conv: self.conv_of(m.req(ek::CONV, "conv")?)?,
            seq: m.uint(ek::SEQ, "seq")?,
            client_msg_id: if m.get(ek::CLIENT_MSG_ID).is_some() {
                m.client_id(ek::CLIENT_MSG_ID, "client_msg_id")?
            } else {
                String::new()
            },
            sender,
            kind: match m.opt_uint(ek::KIND, "kind")? {
                Some(k) => pick(&KINDS, k, "kind")?,
                None => MessageKind::Text,
            },
            body: m.opt_text(ek::TEXT, "body")?.unwrap_or_default(),
            reply_to: m.opt_id(ek::REPLY_TO, "reply_to")?,
            mentions: m.ids(ek::MENTIONS, "mentions")?,
            attachment,
            created_at,
            edited_at: m.opt_int(ek::EDITED_AT, "edited_at")?,
            deleted: m.bool(ek::DELETED),
            id,
        })
    }
}

/// The `id` of a compact command that failed to decode, if it can be read.
pub fn command_id(payload: &[u8]) -> Option<String> {
    if payload.len() > MAX_COMMAND_BYTES {
        return None;
    }
    let m = MapIn::parse(from_bytes(payload).ok()?).ok()?;
    m.client_id(ck::ID, "id").ok().filter(|id| is_client_id(id))
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Send { .. } => "send",
        Op::Edit { .. } => "edit",
        Op::Delete { .. } => "delete",
        Op::React { .. } => "react",
        Op::Unreact { .. } => "unreact",
        Op::Delivered { .. } => "delivered",
        Op::Read { .. } => "read",
        Op::Sync { .. } => "sync",
        Op::Conversations {} => "conversations",
    }
}

fn type_name(body: &EventBody) -> &'static str {
    match body {
        EventBody::Message(_) => "message",
        EventBody::MessageUpdated(_) => "message_updated",
        EventBody::Reaction(_) => "reaction",
        EventBody::Receipt(_) => "receipt",
        EventBody::Member(_) => "member",
        EventBody::Conversation(_) => "conversation",
        EventBody::Ack(_) => "ack",
        EventBody::Error(_) => "error",
        EventBody::Invitation(_) => "invitation",
        EventBody::Sync(_) => "sync",
        EventBody::Conversations(_) => "conversations",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ids::{id_at, new_id};
    use std::collections::HashMap;

    struct Table(HashMap<String, u32>);
    impl Handles for Table {
        fn handle(&self, conv: &str) -> Option<u32> {
            self.0.get(conv).copied()
        }
        fn conv(&self, handle: u32) -> Option<String> {
            self.0
                .iter()
                .find(|(_, h)| **h == handle)
                .map(|(c, _)| c.clone())
        }
    }

    fn message(sender: &str, conv: &str) -> MessageView {
        let at = 1_732_226_400_000;
        MessageView {
            id: id_at(at),
            conv: conv.into(),
            seq: 1,
            sender: sender.into(),
            client_msg_id: "7".into(),
            kind: MessageKind::Text,
            body: "hello".into(),
            reply_to: None,
            mentions: vec![],
            attachment: None,
            created_at: at,
            edited_at: None,
            deleted: false,
        }
    }

    #[test]
    fn a_hello_send_and_its_delivery_are_small_and_round_trip() {
        let (me, other, conv) = (new_id(), new_id(), new_id());
        let table = Table(HashMap::from([(conv.clone(), 1)]));
        let ctx = Context {
            user: &me,
            handles: &table,
        };
        let send = Command {
            v: 1,
            id: "7".into(),
            op: Op::Send {
                conv: conv.clone(),
                body: "hello".into(),
                reply_to: None,
                mentions: vec![],
                attachment: None,
            },
        };
        let bytes = ctx.encode_command(&send).unwrap();
        assert!(bytes.len() <= 20, "{} bytes", bytes.len());
        assert_eq!(ctx.decode_command(&bytes).unwrap(), send);

        // Someone else's message: no client_msg_id, no created_at on the wire.
        let mut from_other = message(&other, &conv);
        let event = Event {
            v: 1,
            seq: Some(300),
            re: None,
            body: EventBody::Message(from_other.clone()),
        };
        let bytes = ctx.encode_event(&event).unwrap();
        assert!(bytes.len() <= 59, "{} bytes", bytes.len());
        from_other.client_msg_id = String::new();
        let decoded = ctx.decode_event(&bytes).unwrap();
        assert_eq!(decoded.body, EventBody::Message(from_other));
        assert_eq!(decoded.seq, Some(300));
    }

    #[test]
    fn every_event_type_round_trips() {
        let (me, conv) = (new_id(), new_id());
        let table = Table(HashMap::from([(conv.clone(), 3)]));
        let ctx = Context {
            user: &me,
            handles: &table,
        };
        let mut own = message(&me, &conv);
        own.created_at += 5; // not the id's time: carried explicitly
        own.attachment = Some(AttachmentView {
            id: new_id(),
            mime: "image/png".into(),
            size: 10,
            name: Some("a.png".into()),
        });
        own.kind = MessageKind::Image;
        own.mentions = vec![new_id()];
        own.reply_to = Some(new_id());
        own.edited_at = Some(9);
        let unknown_conv = new_id(); // no handle: travels as 16 bytes
        let bodies = vec![
            EventBody::Message(own.clone()),
            EventBody::MessageUpdated(MessageView {
                deleted: true,
                body: String::new(),
                ..own.clone()
            }),
            EventBody::Reaction(ReactionView {
                conv: conv.clone(),
                msg: new_id(),
                user: new_id(),
                emoji: "👍".into(),
                added: true,
            }),
            EventBody::Receipt(ReceiptView {
                conv: conv.clone(),
                user: new_id(),
                kind: ReceiptKind::Read,
                seq: 4,
            }),
            EventBody::Member(MemberView {
                conv: conv.clone(),
                user: new_id(),
                action: MemberAction::Removed,
                role: Role::Admin,
                by: Some(new_id()),
            }),
            EventBody::Conversation(ConversationView {
                id: unknown_conv.clone(),
                kind: ConversationKind::Group,
                name: Some("n".into()),
                topic: Some("t".into()),
                created_by: new_id(),
                created_at: 5,
            }),
            EventBody::Ack(AckView {
                conv: Some(conv.clone()),
                msg: Some(new_id()),
                seq: Some(2),
            }),
            EventBody::Error(ErrorView {
                code: ErrorCode::NotMember,
                message: "no".into(),
            }),
            EventBody::Invitation(InvitationView {
                id: new_id(),
                conv: unknown_conv.clone(),
                name: None,
                by: new_id(),
                created_at: 8,
            }),
            EventBody::Conversations(ConversationsView {
                conversations: vec![ConversationEntry {
                    id: conv.clone(),
                    handle: 3,
                    kind: ConversationKind::Direct,
                    name: None,
                }],
            }),
        ];
        let mut all = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let event = Event {
                v: 1,
                seq: Some(i as u64),
                re: Some(format!("r{i}")),
                body,
            };
            let bytes = ctx.encode_event(&event).unwrap();
            assert_eq!(ctx.decode_event(&bytes).unwrap(), event);
            all.push(event);
        }
        let page = Event {
            v: 1,
            seq: None,
            re: Some("12".into()),
            body: EventBody::Sync(SyncView {
                events: all,
                next: 9,
                has_more: true,
            }),
        };
        let bytes = ctx.encode_event(&page).unwrap();
        assert_eq!(ctx.decode_event(&bytes).unwrap(), page);
    }

    #[test]
    fn bad_commands_are_typed_errors() {
        let me = new_id();
        let ctx = Context {
            user: &me,
            handles: &NoHandles,
        };
        let cbor = |v: Value| to_bytes(&v).unwrap();
        let map = |entries: Vec<(u64, Value)>| {
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (Value::Integer(k.into()), v))
                    .collect(),
            )
        };
        assert!(matches!(
            ctx.decode_command(b"{\"op\":1}"),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            ctx.decode_command(&cbor(map(vec![
                (0, Value::Integer(99.into())),
                (1, Value::Integer(1.into()))
            ]))),
            Err(CodecError::UnknownOp(_))
        ));
        let unknown_handle = cbor(map(vec![
            (0, Value::Integer(1.into())),
            (1, Value::Integer(1.into())),
            (2, Value::Integer(5.into())),
            (3, Value::Text("x".into())),
        ]));
        assert_eq!(
            ctx.decode_command(&unknown_handle),
            Err(CodecError::UnknownHandle(5))
        );
        assert_eq!(command_id(&unknown_handle).as_deref(), Some("1"));
        assert!(ctx.decode_command(&vec![0xA1; 40 * 1024]).is_err());
    }
}
