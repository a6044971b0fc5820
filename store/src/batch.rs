//! Planning a write batch, with no I/O.
//!
//! A backend reads the state a batch touches (conversations, members, referenced
//! messages, reactions, attachments, inbox counters) in a handful of queries, hands it
//! to [`plan`], and then executes the resulting [`Plan`] with multi-row statements. Doing
//! the decisions in memory is what lets a batch of N messages cost a constant number of
//! statements instead of N round trips, and keeps the rules in one place for both SQL
//! dialects.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tidings_core::protocol::event::{AttachmentView, ReactionView, ReceiptView};
use tidings_core::protocol::ErrorCode;

use crate::model::*;

#[derive(Debug, Clone)]
pub(crate) struct ConvState {
    pub kind: ConversationKind,
    pub last_seq: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct MemberMarkers {
    pub read_seq: u64,
    pub delivered_seq: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct AttachmentRow {
    pub uploader: String,
    pub view: AttachmentView,
}

/// Everything a batch may read, fetched before planning.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub convs: HashMap<String, ConvState>,
    /// conversation → current members (in a stable order) and their markers.
    pub members: HashMap<String, Vec<(String, MemberMarkers)>>,
    /// Messages referenced by id (edit, delete, react targets and reply_to).
    pub messages: HashMap<String, MessageView>,
    /// Already stored sends, by (sender, client_msg_id).
    pub sent: HashMap<(String, String), MessageView>,
    pub attachments: HashMap<String, AttachmentRow>,
    /// Existing reactions (message, user, emoji) of the referenced messages.
    pub reactions: HashSet<(String, String, String)>,
    /// Current inbox counters of every member of every touched conversation.
    pub inbox_seqs: HashMap<String, u64>,
}

impl Snapshot {
    /// Ids the backend must load before planning, derived from the ops alone.
    pub fn wanted(ops: &[WriteOp]) -> Wanted {
        let mut w = Wanted::default();
        for op in ops {
            match op {
                WriteOp::Send(m) => {
                    w.convs.insert(m.conv.clone());
                    w.senders.insert(m.sender.clone());
                    w.client_ids.insert(m.client_msg_id.clone());
                    if let Some(r) = &m.reply_to {
                        w.messages.insert(r.clone());
                    }
                    if let Some(a) = &m.attachment {
                        w.attachments.insert(a.clone());
                    }
                }
                WriteOp::Edit { msg, .. } | WriteOp::Delete { msg, .. } => {
                    w.messages.insert(msg.clone());
                }
                WriteOp::React { msg, user, .. } => {
                    w.messages.insert(msg.clone());
                    w.reactors.insert(user.clone());
                }
                WriteOp::Marker { conv, .. } => {
                    w.convs.insert(conv.clone());
                }
            }
        }
        w
    }
}

/// The keys a batch reads by.
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    pub convs: HashSet<String>,
    pub messages: HashSet<String>,
    pub senders: HashSet<String>,
    pub client_ids: HashSet<String>,
    pub attachments: HashSet<String>,
    pub reactors: HashSet<String>,
}

/// A stored message row to insert.
#[derive(Debug, Clone)]
pub(crate) struct MessageRow {
    pub view: MessageView,
    pub attachment_id: Option<String>,
    pub deleted_at: Option<i64>,
}

/// The writes a batch resolved to, grouped so each kind is one statement (or a few
/// chunks of one) whatever the batch size.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub outcomes: Vec<WriteOutcome>,
    pub inserts: Vec<MessageRow>,
    /// Final body / deletion state of edited or deleted messages: (id, body, edited_at, deleted_at).
    pub updates: Vec<(String, String, Option<i64>, Option<i64>)>,
    pub reactions_added: Vec<(String, String, String, i64)>,
    pub reactions_removed: Vec<(String, String, String)>,
    /// Final markers: (conv, user, read_seq, delivered_seq).
    pub markers: Vec<(String, String, u64, u64)>,
    /// Final per-conversation counters: (conv, last_seq, last_activity_at).
    pub conv_seqs: Vec<(String, u64, i64)>,
    /// Final per-user inbox counters.
    pub inbox_seqs: Vec<(String, u64)>,
    /// Inbox events to store: (user, seq, body, created_at).
    pub events: Vec<(String, u64, Arc<EventBody>, i64)>,
}

struct Planner {
    snap: Snapshot,
    plan: Plan,
    touched_convs: HashMap<String, i64>,
    touched_markers: HashSet<(String, String)>,
    touched_users: HashSet<String>,
    updated_messages: HashSet<String>,
    deleted_at: HashMap<String, i64>,
}

/// Decides every op of a batch against `snap`, in order.
pub(crate) fn plan(ops: &[WriteOp], snap: Snapshot) -> Plan {
    let mut p = Planner {
        snap,
        plan: Plan::default(),
        touched_convs: HashMap::new(),
        touched_markers: HashSet::new(),
        touched_users: HashSet::new(),
        updated_messages: HashSet::new(),
        deleted_at: HashMap::new(),
    };
    for op in ops {
        let outcome = match op {
            WriteOp::Send(m) => p.send(m),
            WriteOp::Edit {
                user,
                msg,
                body,
                at,
            } => p.edit(user, msg, Some(body), *at),
            WriteOp::Delete { user, msg, at } => p.edit(user, msg, None, *at),
            WriteOp::React {
                user,
                msg,
                emoji,
                add,
                at,
            } => p.react(user, msg, emoji, *add, *at),
            WriteOp::Marker {
                user,
                conv,
                kind,
                seq,
                at,
            } => p.marker(user, conv, *kind, *seq, *at),
        };
        p.plan.outcomes.push(outcome);
    }
    p.finish()
}

impl Planner {
    fn is_member(&self, conv: &str, user: &str) -> bool {
        self.snap
            .members
            .get(conv)
            .is_some_and(|ms| ms.iter().any(|(u, _)| u == user))
    }

    /// Stores `body` in the inbox of every current member of `conv`.
    fn fan_out(&mut self, conv: &str, body: EventBody, at: i64) -> Vec<Delivery> {
        let body = Arc::new(body);
        let members: Vec<String> = self
            .snap
            .members
            .get(conv)
            .map(|ms| ms.iter().map(|(u, _)| u.clone()).collect())
            .unwrap_or_default();
        members
            .into_iter()
            .map(|user| {
                let seq = self.snap.inbox_seqs.entry(user.clone()).or_insert(0);
                *seq += 1;
                let seq = *seq;
                self.touched_users.insert(user.clone());
                self.plan.events.push((user.clone(), seq, body.clone(), at));
                Delivery {
                    user,
                    seq,
                    body: body.clone(),
                }
            })
            .collect()
    }

    fn send(&mut self, m: &NewMessage) -> WriteOutcome {
        let key = (m.sender.clone(), m.client_msg_id.clone());
        if let Some(prev) = self.snap.sent.get(&key) {
            // Same id, other conversation: a client bug (or id reuse), not a retry.
            // Acking it would tell the client a message was stored that never was.
            if prev.conv != m.conv {
                return WriteOutcome::rejected(
                    ErrorCode::Conflict,
                    "this id was already used for a message in another conversation; use a fresh id",
                );
            }
            return WriteOutcome::Unchanged {
                ack: AckView {
                    conv: Some(prev.conv.clone()),
                    msg: Some(prev.id.clone()),
                    seq: Some(prev.seq),
                },
            };
        }
        if !self.snap.convs.contains_key(&m.conv) {
            return WriteOutcome::rejected(ErrorCode::NotFound, "no such conversation");
        }
        if !self.is_member(&m.conv, &m.sender) {
            return WriteOutcome::rejected(ErrorCode::NotFound, "no such conversation");
        }
        if let Some(r) = &m.reply_to {
            if self.snap.messages.get(r).is_none_or(|t| t.conv != m.conv) {
                return WriteOutcome::rejected(
                    ErrorCode::Invalid,
                    "reply_to is not a message of this conversation",
                );
            }
        }
        let attachment = match &m.attachment {
            None => None,
            Some(a) => match self.snap.attachments.get(a) {
                Some(row) if row.uploader == m.sender => Some(row.view.clone()),
                _ => {
                    return WriteOutcome::rejected(
                        ErrorCode::NotFound,
                        "no such attachment among your uploads",
                    )
                }
            },
        };
        let kind = attachment
            .as_ref()
            .map_or(MessageKind::Text, |a| MessageKind::for_mime(&a.mime));
        // Mentions of people outside the conversation are dropped, not refused: the
        // mention would notify nobody and must not reveal whether the id exists.
        let mut mentions: Vec<String> = Vec::with_capacity(m.mentions.len());
        for u in &m.mentions {
            if self.is_member(&m.conv, u) && !mentions.contains(u) {
                mentions.push(u.clone());
            }
        }
        let conv = self.snap.convs.get_mut(&m.conv).expect("checked above");
        conv.last_seq += 1;
        let view = MessageView {
            id: m.id.clone(),
            conv: m.conv.clone(),
            seq: conv.last_seq,
            sender: m.sender.clone(),
            client_msg_id: m.client_msg_id.clone(),
            kind,
            body: m.body.clone(),
            reply_to: m.reply_to.clone(),
            mentions,
            attachment,
            created_at: m.created_at,
            edited_at: None,
            deleted: false,
        };
        self.touched_convs.insert(m.conv.clone(), m.created_at);
        // Writing a message means having read up to it: the sender's own messages never
        // count as unread for them. (Silent: no receipt event for this.)
        if let Some((_, mk)) = self
            .snap
            .members
            .get_mut(&m.conv)
            .and_then(|ms| ms.iter_mut().find(|(u, _)| *u == m.sender))
        {
            mk.read_seq = mk.read_seq.max(view.seq);
            mk.delivered_seq = mk.delivered_seq.max(view.seq);
            self.touched_markers
                .insert((m.conv.clone(), m.sender.clone()));
        }
        self.snap.sent.insert(key, view.clone());
        self.snap.messages.insert(view.id.clone(), view.clone());
        self.plan.inserts.push(MessageRow {
            view: view.clone(),
            attachment_id: m.attachment.clone(),
            deleted_at: None,
        });
        let ack = AckView {
            conv: Some(view.conv.clone()),
            msg: Some(view.id.clone()),
            seq: Some(view.seq),
        };
        let deliveries = self.fan_out(&m.conv, EventBody::Message(view), m.created_at);
        WriteOutcome::Applied { ack, deliveries }
    }

    /// The message `msg` if `user` may see it; "not found" otherwise, so that ids of
    /// other conversations' messages reveal nothing.
    fn visible(&self, user: &str, msg: &str) -> Result<MessageView, WriteOutcome> {
        match self.snap.messages.get(msg) {
            Some(m) if self.is_member(&m.conv, user) => Ok(m.clone()),
            _ => Err(WriteOutcome::rejected(
                ErrorCode::NotFound,
                "no such message",
            )),
        }
    }

    /// Edit (`body` = Some) or delete (`body` = None) one's own message.
    fn edit(&mut self, user: &str, msg: &str, body: Option<&String>, at: i64) -> WriteOutcome {
        let mut view = match self.visible(user, msg) {
            Ok(v) => v,
            Err(refusal) => return refusal,
        };
        if view.sender != user {
            return WriteOutcome::rejected(
                ErrorCode::Forbidden,
                "only the sender may change a message",
            );
        }
        let ack = AckView {
            conv: Some(view.conv.clone()),
            msg: Some(view.id.clone()),
            seq: Some(view.seq),
        };
        match body {
            _ if view.deleted && body.is_none() => return WriteOutcome::Unchanged { ack },
            _ if view.deleted => {
                return WriteOutcome::rejected(ErrorCode::Invalid, "the message was deleted")
            }
            Some(b) if *b == view.body => return WriteOutcome::Unchanged { ack },
            Some(b) => {
                view.body = b.clone();
                view.edited_at = Some(at);
            }
            None => {
                view.body.clear();
                view.mentions.clear();
                view.attachment = None;
                view.deleted = true;
                self.deleted_at.insert(view.id.clone(), at);
            }
        }
        self.snap.messages.insert(view.id.clone(), view.clone());
        self.updated_messages.insert(view.id.clone());
        let conv = view.conv.clone();
        let deliveries = self.fan_out(&conv, EventBody::MessageUpdated(view), at);
        WriteOutcome::Applied { ack, deliveries }
    }

    fn react(&mut self, user: &str, msg: &str, emoji: &str, add: bool, at: i64) -> WriteOutcome {
        let view = match self.visible(user, msg) {
            Ok(v) => v,
            Err(refusal) => return refusal,
        };
        if view.deleted {
            return WriteOutcome::rejected(ErrorCode::Invalid, "the message was deleted");
        }
        let ack = AckView {
            conv: Some(view.conv.clone()),
            msg: Some(view.id.clone()),
            seq: None,
        };
        let key = (msg.to_owned(), user.to_owned(), emoji.to_owned());
        let changed = if add {
            self.snap.reactions.insert(key.clone())
        } else {
            self.snap.reactions.remove(&key)
        };
        if !changed {
            return WriteOutcome::Unchanged { ack };
        }
        if add {
            self.plan.reactions_added.push((key.0, key.1, key.2, at));
        } else {
            self.plan
                .reactions_added
                .retain(|(m, u, e, _)| !(m == msg && u == user && e == emoji));
            self.plan.reactions_removed.push(key);
        }
        let body = EventBody::Reaction(ReactionView {
            conv: view.conv.clone(),
            msg: msg.to_owned(),
            user: user.to_owned(),
            emoji: emoji.to_owned(),
            added: add,
        });
        let deliveries = self.fan_out(&view.conv, body, at);
        WriteOutcome::Applied { ack, deliveries }
    }

    fn marker(
        &mut self,
        user: &str,
        conv: &str,
        kind: ReceiptKind,
        seq: u64,
        at: i64,
    ) -> WriteOutcome {
        let Some(state) = self.snap.convs.get(conv) else {
            return WriteOutcome::rejected(ErrorCode::NotFound, "no such conversation");
        };
        // A marker past the newest message is clamped: it cannot acknowledge the future.
        let seq = seq.min(state.last_seq);
        let is_room = state.kind == ConversationKind::Room;
        let Some(markers) = self
            .snap
            .members
            .get_mut(conv)
            .and_then(|ms| ms.iter_mut().find(|(u, _)| u == user))
            .map(|(_, m)| m)
        else {
            return WriteOutcome::rejected(ErrorCode::NotFound, "no such conversation");
        };
        let ack = AckView {
            conv: Some(conv.to_owned()),
            msg: None,
            seq: Some(seq),
        };
        let moved = match kind {
            ReceiptKind::Delivered if seq > markers.delivered_seq => {
                markers.delivered_seq = seq;
                true
            }
            // Reading implies delivery.
            ReceiptKind::Read if seq > markers.read_seq => {
                markers.read_seq = seq;
                markers.delivered_seq = markers.delivered_seq.max(seq);
                true
            }
            _ => false,
        };
        if !moved {
            return WriteOutcome::Unchanged { ack };
        }
        self.touched_markers
            .insert((conv.to_owned(), user.to_owned()));
        let body = EventBody::Receipt(ReceiptView {
            conv: conv.to_owned(),
            user: user.to_owned(),
            kind,
            seq,
        });
        // In public rooms everyone's receipts would flood everyone; there only the
        // reader's own devices hear of it (to clear badges).
        let deliveries = if is_room {
            self.fan_out_to(user, body, at)
        } else {
            self.fan_out(conv, body, at)
        };
        WriteOutcome::Applied { ack, deliveries }
    }

    fn fan_out_to(&mut self, user: &str, body: EventBody, at: i64) -> Vec<Delivery> {
        let body = Arc::new(body);
        let seq = self.snap.inbox_seqs.entry(user.to_owned()).or_insert(0);
        *seq += 1;
        let seq = *seq;
        self.touched_users.insert(user.to_owned());
        self.plan
            .events
            .push((user.to_owned(), seq, body.clone(), at));
        vec![Delivery {
            user: user.to_owned(),
            seq,
            body,
        }]
    }

    fn finish(mut self) -> Plan {
        let inserted: HashSet<&str> = self
            .plan
            .inserts
            .iter()
            .map(|r| r.view.id.as_str())
            .collect();
        for id in &self.updated_messages {
            let Some(v) = self.snap.messages.get(id) else {
                continue;
            };
            if inserted.contains(id.as_str()) {
                continue;
            }
            let deleted_at = self.deleted_at.get(id).copied();
            self.plan
                .updates
                .push((v.id.clone(), v.body.clone(), v.edited_at, deleted_at));
        }
        // A message sent and then edited in the same batch is inserted in its final form.
        for row in &mut self.plan.inserts {
            if let Some(v) = self.snap.messages.get(&row.view.id) {
                row.view = v.clone();
                row.deleted_at = self.deleted_at.get(&row.view.id).copied();
                if v.deleted {
                    row.attachment_id = None;
                }
            }
        }
        for (conv, at) in self.touched_convs {
            if let Some(c) = self.snap.convs.get(&conv) {
                self.plan.conv_seqs.push((conv, c.last_seq, at));
            }
        }
        for (conv, user) in self.touched_markers {
            if let Some((_, m)) = self
                .snap
                .members
                .get(&conv)
                .and_then(|ms| ms.iter().find(|(u, _)| *u == user))
            {
                self.plan
                    .markers
                    .push((conv, user, m.read_seq, m.delivered_seq));
            }
        }
        for user in self.touched_users {
            let seq = self.snap.inbox_seqs.get(&user).copied().unwrap_or(0);
            self.plan.inbox_seqs.push((user, seq));
        }
        // Sorted so concurrent batches on PostgreSQL update rows in the same order.
        self.plan.conv_seqs.sort();
        self.plan.inbox_seqs.sort();
        self.plan.markers.sort();
        self.plan
    }
}
