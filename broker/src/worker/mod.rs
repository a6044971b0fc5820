//! The persistence worker: everything devices publish on `u/+/out` comes here.
//!
//! It drains whatever has arrived (up to [`MAX_BATCH`] commands) without waiting for
//! more, so an idle server answers at once and a busy one writes big batches. For each
//! batch: decode (JSON or CBOR, sniffed), validate, rate-limit, then one
//! `Store::write_batch` transaction, then acks to senders and events to members.
//! Every refusal becomes an `error` event naming the command, never a silent drop.

pub mod ops;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tidings_core::protocol::{CodecError, ErrorCode, Event, WireFormat};
use tidings_store::{now_ms, Delivery, EventSink, Store, WriteOp, WriteOutcome};
use tokio::sync::mpsc::Receiver;

use crate::connection::AckCode;
use crate::fanout::Fanout;
use crate::hub::{ConnHandle, Outbound};
use tidings_core::ratelimit::RateLimiter;

/// Most commands in one store transaction.
pub const MAX_BATCH: usize = 256;

/// Where to send the PUBACK of a QoS 1 command once it is stored.
#[derive(Clone)]
pub struct AckTarget {
    pub conn: Arc<ConnHandle>,
    pub pkid: u16,
}

/// What the front door hands over, in each connection's PUBLISH order.
pub enum Inbound {
    /// A command: the sender is the connection's user (the topic was `u/{user}/out`,
    /// which the ACL makes unforgeable).
    Command {
        user: String,
        payload: Bytes,
        ack: Option<AckTarget>,
    },
    /// A PUBACK for a publish that is not a command (QoS 1 typing): it goes through the
    /// queue only so that it cannot overtake the PUBACKs of earlier commands.
    AckOnly(AckTarget, AckCode),
}

/// One command's answer, sent in arrival order once its batch is decided.
struct Answer {
    user: String,
    format: WireFormat,
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
}

pub struct Worker {
    store: Arc<dyn Store>,
    fanout: Arc<Fanout>,
    /// Shared with the REST API: one per-user send budget, whichever way a user sends.
    limiter: Arc<Mutex<RateLimiter>>,
}

pub fn error_code(e: &CodecError) -> ErrorCode {
    match e {
        CodecError::TooLarge(_) => ErrorCode::TooLarge,
        CodecError::UnknownOp(_) => ErrorCode::UnknownOp,
        CodecError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        CodecError::Malformed(_) | CodecError::Encode(_) => ErrorCode::Malformed,
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
    pub fn new(
        store: Arc<dyn Store>,
        fanout: Arc<Fanout>,
        limiter: Arc<Mutex<RateLimiter>>,
    ) -> Self {
        Worker {
            store,
            fanout,
            limiter,
        }
    }

    /// Runs until every sender (the front door) is gone.
    pub async fn run(mut self, mut inbound: Receiver<Inbound>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while inbound.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.process(batch.drain(..)).await;
        }
        tracing::info!("persistence worker stopped");
    }

    fn allowed(&self, user: &str, now: i64) -> bool {
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(user, now)
    }

    async fn process(&mut self, items: impl Iterator<Item = Inbound>) {
        let now = now_ms();
        let mut answers = Vec::new();
        let mut ops = Vec::new();
        for item in items {
            let (user, payload, ack) = match item {
                Inbound::Command { user, payload, ack } => (user, payload, ack),
                Inbound::AckOnly(target, code) => {
                    answers.push(Answer {
                        user: String::new(),
                        format: WireFormat::Json,
                        ack: Some(target),
                        outcome: Pending::AckOnly(code),
                    });
                    continue;
                }
            };
            let format = WireFormat::sniff(&payload);
            let outcome = match format.codec().decode_command(&payload) {
                Err(e) => {
                    let code = error_code(&e);
                    Pending::Refused(
                        Box::new(Event::error(None, code, e.to_string())),
                        ack_code(code),
                    )
                }
                Ok(cmd) => match cmd.validate() {
                    Err(invalid) => Pending::Refused(
                        Box::new(Event::error(Some(cmd.id), invalid.code, invalid.message)),
                        ack_code(invalid.code),
                    ),
                    Ok(()) if ops::is_rate_limited(&cmd.op) && !self.allowed(&user, now) => {
                        Pending::Refused(
                            Box::new(Event::error(
                                Some(cmd.id),
                                ErrorCode::RateLimited,
                                "too many messages; retry later with the same id",
                            )),
                            AckCode::QuotaExceeded,
                        )
                    }
                    Ok(()) => {
                        let command_id = cmd.id.clone();
                        ops.push(ops::write_op(&user, cmd, now));
                        Pending::Stored {
                            op: ops.len() - 1,
                            command_id,
                        }
                    }
                },
            };
            answers.push(Answer {
                user,
                format,
                ack,
                outcome,
            });
        }
        let written = if ops.is_empty() {
            Ok(Vec::new())
        } else {
            self.write(&ops).await
        };
        let mut outcomes: Vec<Option<WriteOutcome>> = match written {
            Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::error!(error = %e, commands = ops.len(), "could not store a batch");
                Vec::new()
            }
        };
        // Answers go out in arrival order, so each connection's PUBACKs are in the order
        // of its PUBLISHes, as MQTT requires.
        for answer in answers {
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
                        Some(outcome) => stored(command_id, outcome),
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
            };
            // The sender's answer first, then everyone's events.
            self.fanout.reply(&answer.user, answer.format, &event);
            if let Some(target) = answer.ack {
                target.conn.send(Outbound::PubAck {
                    pkid: target.pkid,
                    code,
                });
            }
            if !deliveries.is_empty() {
                self.fanout.deliver(&deliveries);
            }
        }
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
fn stored(command_id: String, outcome: WriteOutcome) -> (Event, AckCode, Vec<Delivery>) {
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
