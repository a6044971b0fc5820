//! Catch-up, shared by `GET /v1/sync` and the MQTT `sync` command: the user's inbox
//! events after `since` (their `iseq`), as they were fanned out, except that messages
//! appear as they are now: edited text replaces the original, deleted text is gone.

use std::collections::HashMap;

use tidings_core::protocol::event::{EventBody, MessageView, SyncView};
use tidings_core::protocol::limits::MAX_PAGE;
use tidings_core::protocol::Event;

use crate::error::StoreResult;
use crate::store::Store;

/// One page of `user`'s inbox after `since`; `limit` is clamped to 1..=MAX_PAGE.
pub async fn sync_page(
    store: &dyn Store,
    user: &str,
    since: u64,
    limit: Option<u32>,
) -> StoreResult<SyncView> {
    let limit = limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let mut rows = store.inbox_since(user, since, limit + 1).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows.last().map_or(since, |e| e.seq);
    // Events are replayed with each message as it is now: an edit or a deletion meant
    // to remove text removes it from replays too (history already reads the rows).
    let message_ids: Vec<String> = rows
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Message(m) | EventBody::MessageUpdated(m) => Some(m.id.clone()),
            _ => None,
        })
        .collect();
    let current: HashMap<String, MessageView> = store
        .messages_by_ids(&message_ids)
        .await?
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    let redact = |m: MessageView| match current.get(&m.id) {
        Some(now) => now.clone(),
        // The row is gone: replay nothing of what it said.
        None => MessageView {
            body: String::new(),
            mentions: Vec::new(),
            attachment: None,
            deleted: true,
            ..m
        },
    };
    let events = rows
        .into_iter()
        .map(|e| {
            let body = match e.body {
                EventBody::Message(m) => EventBody::Message(redact(m)),
                EventBody::MessageUpdated(m) => EventBody::MessageUpdated(redact(m)),
                other => other,
            };
            Event {
                v: 1,
                seq: Some(e.seq),
                re: None,
                body,
            }
        })
        .collect();
    Ok(SyncView {
        events,
        next,
        has_more,
    })
}
