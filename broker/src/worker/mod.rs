//! The persistence worker: everything devices publish on `u/+/out` comes here.
//!
//! It drains whatever has arrived (up to [`MAX_BATCH`] commands) without waiting for
//! more, so an idle server answers at once and a busy one writes big batches. For each
//! batch: decode (JSON or CBOR, sniffed), validate, rate-limit, then one
//! `Store::write_batch` transaction, then acks to senders and events to members.
//! Every refusal becomes an `error` event naming the command, never a silent drop.

pub mod ops;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidings_core::protocol::limits::{SEND_BURST, SEND_PER_SECOND};
use tidings_core::protocol::{CodecError, ErrorCode, Event, Topic, WireFormat};
use tidings_store::{now_ms, EventSink, Store, WriteOp, WriteOutcome};
use tokio::sync::mpsc::Receiver;

use crate::fanout::Fanout;
use tidings_core::ratelimit::RateLimiter;

/// Most commands in one store transaction.
pub const MAX_BATCH: usize = 256;

/// A raw publish taken off the broker link.
#[derive(Debug)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
}

/// Who to answer for one accepted command.
struct Origin {
    user: String,
    format: WireFormat,
    command_id: String,
}

pub struct Worker {
    store: Arc<dyn Store>,
    fanout: Arc<Fanout>,
    limiter: RateLimiter,
}

pub fn error_code(e: &CodecError) -> ErrorCode {
    match e {
        CodecError::TooLarge(_) => ErrorCode::TooLarge,
        CodecError::UnknownOp(_) => ErrorCode::UnknownOp,
        CodecError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        CodecError::Malformed(_) | CodecError::Encode(_) => ErrorCode::Malformed,
    }
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, fanout: Arc<Fanout>) -> Self {
        Worker {
            store,
            fanout,
            limiter: RateLimiter::new(SEND_BURST, SEND_PER_SECOND),
        }
    }

    /// Runs until the link reader goes away.
    pub async fn run(mut self, mut inbound: Receiver<Inbound>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while inbound.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.process(batch.drain(..)).await;
        }
        tracing::info!("persistence worker stopped");
    }

    async fn process(&mut self, items: impl Iterator<Item = Inbound>) {
        let now = now_ms();
        let mut origins = Vec::new();
        let mut ops = Vec::new();
        for item in items {
            let Some(Topic::Outbox(user)) =
                std::str::from_utf8(&item.topic).ok().and_then(Topic::parse)
            else {
                tracing::warn!(topic = ?item.topic, "worker received a publish outside u/+/out");
                continue;
            };
            let format = WireFormat::sniff(&item.payload);
            let cmd = match format.codec().decode_command(&item.payload) {
                Ok(cmd) => cmd,
                Err(e) => {
                    self.fanout.reply(
                        &user,
                        format,
                        &Event::error(None, error_code(&e), e.to_string()),
                    );
                    continue;
                }
            };
            if let Err(invalid) = cmd.validate() {
                self.fanout.reply(
                    &user,
                    format,
                    &Event::error(Some(cmd.id), invalid.code, invalid.message),
                );
                continue;
            }
            if ops::is_rate_limited(&cmd.op) && !self.limiter.allow(&user, now) {
                let msg = format!(
                    "at most {SEND_PER_SECOND} messages a second; retry later with the same id"
                );
                self.fanout.reply(
                    &user,
                    format,
                    &Event::error(Some(cmd.id), ErrorCode::RateLimited, msg),
                );
                continue;
            }
            origins.push(Origin {
                user: user.clone(),
                format,
                command_id: cmd.id.clone(),
            });
            ops.push(ops::write_op(&user, cmd, now));
        }
        if ops.is_empty() {
            return;
        }
        match self.write(&ops).await {
            Ok(outcomes) => {
                for (origin, outcome) in origins.iter().zip(outcomes) {
                    self.answer(origin, outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = ops.len(), "could not store a batch");
                for origin in &origins {
                    let event = Event::error(
                        Some(origin.command_id.clone()),
                        ErrorCode::Internal,
                        "not stored; retry with the same id",
                    );
                    self.fanout.reply(&origin.user, origin.format, &event);
                }
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

    fn answer(&self, origin: &Origin, outcome: WriteOutcome) {
        let re = Some(origin.command_id.clone());
        let (reply, deliveries) = match outcome {
            WriteOutcome::Applied { ack, deliveries } => (Event::ack(re, ack), deliveries),
            WriteOutcome::Unchanged { ack } => (Event::ack(re, ack), Vec::new()),
            WriteOutcome::Rejected { code, message } => {
                (Event::error(re, code, message), Vec::new())
            }
        };
        // The sender's answer first, then everyone's events.
        self.fanout.reply(&origin.user, origin.format, &reply);
        if !deliveries.is_empty() {
            self.fanout.deliver(&deliveries);
        }
    }
}
