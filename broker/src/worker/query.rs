//! The commands that read instead of write: `sync` (catch-up without HTTP) and
//! `conversations` (the caller's conversations and their handles). They run in the
//! replier, in arrival order with the writes around them, so a device that sends and
//! then syncs sees its own message in the page.

use tidings_core::protocol::event::{ConversationEntry, ConversationsView, EventBody};
use tidings_core::protocol::limits::MAX_PAGE;
use tidings_core::protocol::{Command, ErrorCode, Event, Op, WireFormat};
use tidings_store::{ActivityPage, MembershipIndex, Store};

use crate::fanout::{encoded, inbox_topic, Fanout};
use crate::hub::{ConnHandle, Outbound};

/// The answer to a query command, `re` set to its id.
pub async fn answer(
    store: &dyn Store,
    index: &MembershipIndex,
    from: &ConnHandle,
    cmd: Command,
) -> Event {
    let re = Some(cmd.id);
    let body = match cmd.op {
        Op::Sync { since, limit } => {
            tidings_store::sync::sync_page(store, &from.user, since, limit)
                .await
                .map(|mut page| {
                    // A credential limited to some conversations sees only theirs; the
                    // `iseq` numbers of the others are simply skipped.
                    page.events
                        .retain(|e| e.body.conv().is_none_or(|c| from.grant.covers(c)));
                    EventBody::Sync(page)
                })
        }
        Op::Conversations {} => {
            let page = ActivityPage {
                before: None,
                limit: MAX_PAGE,
                archived: None,
            };
            store
                .list_conversations(&from.user, &page)
                .await
                .map(|list| {
                    let conversations = list
                        .into_iter()
                        .filter(|s| from.grant.covers(&s.conversation.id))
                        .filter_map(|s| {
                            let c = s.conversation;
                            Some(ConversationEntry {
                                handle: index.handle(&from.user, &c.id)?,
                                kind: c.kind,
                                name: c.name,
                                id: c.id,
                            })
                        })
                        .collect();
                    EventBody::Conversations(ConversationsView { conversations })
                })
        }
        _ => return Event::error(re, ErrorCode::Internal, "not a query"),
    };
    match body {
        Ok(body) => Event {
            v: 1,
            seq: None,
            re,
            body,
        },
        Err(e) => {
            tracing::error!(error = %e, user = %from.user, "query failed");
            Event::error(re, ErrorCode::Unavailable, "could not read; retry")
        }
    }
}

/// Sends `event` to the one connection that asked: in its codec on the inbox topic it
/// reads (`None` = the compact profile, on `i`).
pub fn send_to(fanout: &Fanout, to: &ConnHandle, format: Option<WireFormat>, event: &Event) {
    let Some(f) = format else {
        return fanout.reply_compact(to, event);
    };
    if let Some(payload) = encoded(f.codec().encode_event(event), "an answer") {
        let topic = inbox_topic(&to.user, f).into();
        to.send(Outbound::Publish {
            topic,
            payload: payload.into(),
        });
    }
}
