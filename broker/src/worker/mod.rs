//! The persistence worker: everything devices publish on `u/+/out` comes here.
//!
//! It drains whatever has arrived (up to [`MAX_BATCH`] commands) without waiting for
//! more, so an idle server answers at once and a busy one writes big batches. For each
//! batch: decode (JSON or CBOR, sniffed), validate, rate-limit, then one
//! `Store::write_batch` transaction, then acks to senders and events to members.
//! Every refusal becomes an `error` event naming the command, never a silent drop.
//!
//! Two stages, so the database is never idle while events are encoded and queued: the
//! writer decides and stores batch N+1 while the replier answers batch N. Both keep
//! arrival order, so each connection's PUBACKs still follow its PUBLISHes; the channel
//! between them is short, so a slow replier slows the writer instead of piling up
//! decided batches.

pub mod ops;
mod query;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidings_core::protocol::compact;
use tidings_core::protocol::{codec, CodecError, Command, ErrorCode, Event, EventBody, WireFormat};
use tidings_store::{now_ms, Delivery, EventSink, Store, WriteOp, WriteOutcome};
use tokio::sync::mpsc::Receiver;

use crate::connection::AckCode;
use crate::fanout::{decode_command, Fanout};
use crate::hub::{ConnHandle, Outbound};
use tidings_store::ratelimit::Budget;

/// Most commands in one store transaction.
pub const MAX_BATCH: usize = 256;

/// Stored batches waiting for the replier.
const REPLY_QUEUE: usize = 2;

/// Where to send the PUBACK of a QoS 1 command once it is stored.
#[derive(Clone)]
pub struct AckTarget {
    pub conn: Arc<ConnHandle>,
    pub pkid: u16,
}

/// What the front door hands over, in each connection's PUBLISH order.
pub enum Inbound {
    /// A command from `from`'s user (the topic was their own `u/{user}/out`, which the
    /// ACL makes unforgeable, or the compact profile's `o`). `pkid` is set for QoS 1.
    Command {
        from: Arc<ConnHandle>,
        payload: Bytes,
        pkid: Option<u16>,
        compact: bool,
        /// When the front door read it: the start of `tidings_command_seconds`.
        received: Instant,
    },
    /// A PUBACK for a publish that is not a command (QoS 1 typing): it goes through the
    /// queue only so that it cannot overtake the PUBACKs of earlier commands.
    AckOnly(AckTarget, AckCode),
}

/// Where a command's answer goes.
#[derive(Clone, Copy)]
enum ReplyTo {
    /// The user's inbox in the codec the command was written in (`u/{me}/in` or
    /// `u/{me}/in/c`), where all of the user's devices following it see it.
    Inbox(WireFormat),
    /// The compact profile: only the connection that sent it, on its `i`, without the
    /// `ack` if its credential asked for none (errors always go).
    Compact,
    /// A payload neither codec could read: the device's codec is unknown, so the error
    /// goes to both inboxes (each is encoded only if someone follows it).
    EitherInbox,
}

/// One command's answer, sent in arrival order once its batch is decided.
struct Answer {
    from: Option<Arc<ConnHandle>>,
    /// When the command arrived (`None` for a bare PUBACK, which is not a command).
    received: Option<Instant>,
    reply_to: ReplyTo,
    ack: Option<AckTarget>,
    outcome: Pending,
}

enum Pending {
    /// Nothing to store or say; only the PUBACK.
    AckOnly(AckCode),
    /// Refused before storage (undecodable, invalid, rate limited).
    Refused(Box<Event>, AckCode),
    /// The `i`-th op of the batch's write.
    Stored { op: usize, command_id: String },
    /// A read (`sync`, `conversations`), answered by the replier.
    Query(Box<Command>),
}

pub struct Worker {
    store: Arc<dyn Store>,
    fanout: Arc<Fanout>,
    /// Shared with the REST API: one per-user send budget, whichever way a user sends
    /// (and, on PostgreSQL with several nodes, whichever node takes the command).
    limiter: Arc<Budget>,
}

/// A batch after its write: the answers in arrival order and what the store said of
/// each op (`None` for every op when the transaction failed).
struct Stored {
    answers: Vec<Answer>,
    outcomes: Vec<Option<WriteOutcome>>,
}

pub fn error_code(e: &CodecError) -> ErrorCode {
    match e {
        CodecError::TooLarge(_) => ErrorCode::TooLarge,
        CodecError::UnknownOp(_) => ErrorCode::UnknownOp,
        CodecError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        CodecError::Malformed(_) | CodecError::Encode(_) => ErrorCode::Malformed,
        CodecError::UnknownHandle(_) => ErrorCode::NotFound,
    }
}

/// The MQTT 5 PUBACK reason that goes with an error event.
fn ack_code(code: ErrorCode) -> AckCode {
    match code {
        ErrorCode::Malformed | ErrorCode::UnknownOp | ErrorCode::UnsupportedVersion => {
            AckCode::PayloadFormatInvalid
        }
        ErrorCode::RateLimited | ErrorCode::Unavailable => AckCode::QuotaExceeded,
        ErrorCode::NotMember | ErrorCode::Forbidden => AckCode::NotAuthorized,
        _ => AckCode::Refused,
    }
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, fanout: Arc<Fanout>, limiter: Arc<Budget>) -> Self {
        Worker {
            store,
            fanout,
            limiter,
        }
    }

    /// Runs until every sender (the front door) is gone and every stored batch is
    /// answered. The replier runs on `replies_on`, so that encoding and routing events
    /// never wait for the writer (which may have a thread of its own).
    pub async fn run(self, mut inbound: Receiver<Inbound>, replies_on: tokio::runtime::Handle) {
        let (stored_tx, mut stored_rx) = tokio::sync::mpsc::channel::<Stored>(REPLY_QUEUE);
        let fanout = self.fanout.clone();
        let store = self.store.clone();
        let replier = replies_on.spawn(async move {
            while let Some(stored) = stored_rx.recv().await {
                reply(&fanout, store.as_ref(), stored).await;
            }
        });
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while inbound.recv_many(&mut batch, MAX_BATCH).await > 0 {
            metrics::histogram!("tidings_worker_batch_size").record(batch.len() as f64);
            metrics::gauge!("tidings_worker_queue_depth").set(inbound.len() as f64);
            let stored = self.process(batch.drain(..)).await;
            if stored_tx.send(stored).await.is_err() {
                break;
            }
        }
        drop(stored_tx);
        let _ = replier.await;
        tracing::info!("persistence worker stopped");
    }

    /// Decides and stores one batch; the replier answers it.
    async fn process(&self, items: impl Iterator<Item = Inbound>) -> Stored {
        let now = now_ms();
        let mut answers: Vec<Answer> = Vec::new();
        let mut ops = Vec::new();
        // Commands past every check but the rate limit, in arrival order, and how many
        // tokens each user needs for them.
        let mut accepted: Vec<(usize, Command)> = Vec::new();
        let mut wanted: HashMap<String, u32> = HashMap::new();
        // Looked up once per batch, not per command (the registry hashes the name).
        let queue_wait = metrics::histogram!("tidings_command_queue_seconds");
        for item in items {
            let (from, payload, pkid, compact, received) = match item {
                Inbound::Command {
                    from,
                    payload,
                    pkid,
                    compact,
                    received,
                } => {
                    queue_wait.record(received.elapsed().as_secs_f64());
                    (from, payload, pkid, compact, received)
                }
                Inbound::AckOnly(target, code) => {
                    answers.push(Answer {
                        from: None,
                        received: None,
                        reply_to: ReplyTo::Inbox(WireFormat::Json),
                        ack: Some(target),
                        outcome: Pending::AckOnly(code),
                    });
                    continue;
                }
            };
            let (format, decoded) =
                decode_command(self.fanout.hub().index(), &from.user, &payload, compact);
            let mut reply_to = format.map_or(ReplyTo::Compact, ReplyTo::Inbox);
            let refuse = |id: Option<String>, code: ErrorCode, message: String, ack: AckCode| {
                Pending::Refused(Box::new(Event::error(id, code, message)), ack)
            };
            let outcome = match decoded {
                Err(e) => {
                    if !compact {
                        reply_to = ReplyTo::EitherInbox;
                    }
                    let code = error_code(&e);
                    let id = if compact {
                        compact::command_id(&payload)
                    } else {
                        codec::command_id(&payload)
                    };
                    refuse(id, code, e.to_string(), ack_code(code))
                }
                Ok(cmd) => match cmd.validate() {
                    Err(invalid) => refuse(
                        Some(cmd.id),
                        invalid.code,
                        invalid.message,
                        ack_code(invalid.code),
                    ),
                    Ok(()) => match ops::grant_refusal(&from.grant, &cmd.op) {
                        Some((code, why)) => refuse(Some(cmd.id), code, why.into(), ack_code(code)),
                        None if cmd.op.is_query() => Pending::Query(Box::new(cmd)),
                        None => {
                            // Decided below, once the batch's tokens are charged.
                            if ops::is_rate_limited(&cmd.op) {
                                *wanted.entry(from.user.clone()).or_insert(0) += 1;
                            }
                            accepted.push((answers.len(), cmd));
                            Pending::AckOnly(AckCode::Success)
                        }
                    },
                },
            };
            answers.push(Answer {
                ack: pkid.map(|pkid| AckTarget {
                    conn: from.clone(),
                    pkid,
                }),
                from: Some(from),
                received: Some(received),
                reply_to,
                outcome,
            });
        }
        // One charge for the whole batch: a single statement when the budget is shared
        // by several nodes (PostgreSQL), in-memory buckets otherwise.
        let mut granted: HashMap<String, u32> = if wanted.is_empty() {
            HashMap::new()
        } else {
            let asks: Vec<(&str, u32)> = wanted.iter().map(|(u, n)| (u.as_str(), *n)).collect();
            let got = self.limiter.take(&asks).await;
            asks.iter()
                .zip(got)
                .map(|((user, _), (n, _))| ((*user).to_owned(), n))
                .collect()
        };
        for (at, cmd) in accepted {
            let answer = &mut answers[at];
            let Some(user) = answer.from.as_ref().map(|f| f.user.clone()) else {
                continue;
            };
            if ops::is_rate_limited(&cmd.op) {
                let left = granted.entry(user.clone()).or_insert(0);
                if *left == 0 {
                    answer.outcome = Pending::Refused(
                        Box::new(Event::error(
                            Some(cmd.id),
                            ErrorCode::RateLimited,
                            "too many messages; retry later with the same id",
                        )),
                        AckCode::QuotaExceeded,
                    );
                    continue;
                }
                *left -= 1;
            }
            let command_id = cmd.id.clone();
            answer.outcome = match ops::write_op(&user, cmd, now) {
                Some(op) => {
                    ops.push(op);
                    Pending::Stored {
                        op: ops.len() - 1,
                        command_id,
                    }
                }
                None => Pending::AckOnly(AckCode::Success),
            };
        }
        let written = if ops.is_empty() {
            Ok(Vec::new())
        } else {
            let started = std::time::Instant::now();
            let written = self.write(&ops).await;
            metrics::histogram!("tidings_store_batch_seconds")
                .record(started.elapsed().as_secs_f64());
            written
        };
        let outcomes: Vec<Option<WriteOutcome>> = match written {
            Ok(outcomes) => {
                // Retries answered from the stored message are not stored again.
                let sends = ops
                    .iter()
                    .zip(&outcomes)
                    .filter(|(op, out)| {
                        matches!(op, WriteOp::Send(_))
                            && matches!(out, WriteOutcome::Applied { .. })
                    })
                    .count();
                metrics::counter!("tidings_messages_stored_total").increment(sends as u64);
                outcomes.into_iter().map(Some).collect()
            }
            Err(e) => {
                tracing::error!(error = %e, commands = ops.len(), "could not store a batch");
                metrics::counter!("tidings_store_batch_failures_total").increment(1);
                Vec::new()
            }
        };
        Stored { answers, outcomes }
    }

    /// `write_batch` with a few retries: a failed transaction wrote nothing, and a
    /// brief database hiccup should not bounce every command of the batch.
    async fn write(&self, ops: &[WriteOp]) -> tidings_store::StoreResult<Vec<WriteOutcome>> {
        let mut delay = Duration::from_millis(50);
        for _ in 0..3 {
            match self.store.write_batch(ops).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(e) => {
                    tracing::warn!(error = %e, "write batch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        }
        self.store.write_batch(ops).await
    }
}

/// The sender's answer to a stored op, and the events it produced.
fn answer_to(command_id: String, outcome: WriteOutcome) -> (Event, AckCode, Vec<Delivery>) {
    let re = Some(command_id);
    match outcome {
        WriteOutcome::Applied { ack, deliveries } => {
            (Event::ack(re, ack), AckCode::Success, deliveries)
        }
        WriteOutcome::Unchanged { ack } => (Event::ack(re, ack), AckCode::Success, Vec::new()),
        WriteOutcome::Rejected { code, message } => {
            (Event::error(re, code, message), ack_code(code), Vec::new())
        }
    }
}

/// Answers a stored batch in arrival order, so each connection's PUBACKs are in the
/// order of its PUBLISHes, as MQTT requires.
async fn reply(fanout: &Fanout, store: &dyn Store, stored: Stored) {
    let Stored {
        answers,
        mut outcomes,
    } = stored;
    let mut delivered = 0u64;
    let answered = metrics::histogram!("tidings_command_seconds");
    for answer in answers {
        // Recorded when this iteration ends, whichever way it ends (several `continue`).
        let _answered = answer.received.map(|received| AnsweredTimer {
            histogram: &answered,
            received,
        });
        let format = answer.reply_to_format();
        let (event, code, deliveries) = match answer.outcome {
            Pending::AckOnly(code) => {
                if let Some(target) = answer.ack {
                    target.conn.send(Outbound::PubAck {
                        pkid: target.pkid,
                        code,
                    });
                }
                continue;
            }
            Pending::Refused(event, code) => (*event, code, Vec::new()),
            Pending::Stored { op, command_id } => {
                match outcomes.get_mut(op).and_then(Option::take) {
                    Some(outcome) => answer_to(command_id, outcome),
                    None => (
                        Event::error(
                            Some(command_id),
                            ErrorCode::Internal,
                            "not stored; retry with the same id",
                        ),
                        AckCode::Refused,
                        Vec::new(),
                    ),
                }
            }
            Pending::Query(cmd) => {
                let Some(from) = &answer.from else { continue };
                let event = query::answer(store, fanout.hub().index(), from, *cmd).await;
                let code = match &event.body {
                    EventBody::Error(e) => ack_code(e.code),
                    _ => AckCode::Success,
                };
                // A page of someone's inbox is for the device that asked, not for
                // every device following the inbox.
                query::send_to(fanout, from, format, &event);
                (event, code, Vec::new())
            }
        };
        match (answer.reply_to, &answer.from) {
            (_, None) => {}
            (_, Some(_))
                if matches!(event.body, EventBody::Sync(_) | EventBody::Conversations(_)) => {}
            (ReplyTo::Inbox(format), Some(from)) => fanout.reply(&from.user, format, &event),
            (ReplyTo::EitherInbox, Some(from)) => {
                fanout.reply(&from.user, WireFormat::Json, &event);
                fanout.reply(&from.user, WireFormat::Cbor, &event);
            }
            (ReplyTo::Compact, Some(from)) => {
                if from.grant.acks || !matches!(event.body, EventBody::Ack(_)) {
                    fanout.reply_compact(from, &event);
                }
            }
        }
        if let Some(target) = answer.ack {
            target.conn.send(Outbound::PubAck {
                pkid: target.pkid,
                code,
            });
        }
        if !deliveries.is_empty() {
            delivered += deliveries.len() as u64;
            fanout.deliver(&deliveries);
        }
    }
    metrics::counter!("tidings_events_delivered_total").increment(delivered);
}

/// Records `tidings_command_seconds` when dropped: the time from the front door reading
/// a command to its answer, PUBACK and deliveries being handed to the connections'
/// writers. With `tidings_command_queue_seconds` (front door to the worker taking it)
/// and `tidings_store_batch_seconds` (its batch's transaction), it splits a message's
/// time in the server; the rest of the latency a client sees is the sockets', both
/// ways, and the writers' (issue 9: the pairs bench reports these per step).
struct AnsweredTimer<'a> {
    histogram: &'a metrics::Histogram,
    received: Instant,
}

impl Drop for AnsweredTimer<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.received.elapsed().as_secs_f64());
    }
}

impl Answer {
    /// The codec the asking device reads.
    fn reply_to_format(&self) -> Option<WireFormat> {
        match self.reply_to {
            ReplyTo::Inbox(format) => Some(format),
            ReplyTo::EitherInbox => Some(WireFormat::Json),
            ReplyTo::Compact => None,
        }
    }
}
