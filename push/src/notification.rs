//! What a push says, independent of the provider that carries it.

use serde::Serialize;
use tidings_store::{EventBody, PushJob, PushReason};

/// One push for one device. By default it carries ids only (what the app needs to
/// fetch the event itself, so nothing readable crosses Apple's or Google's servers);
/// `sender` and `body` are filled only when the device opted in to text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// The event's id: the message id, or the invitation id.
    pub event_id: String,
    pub conversation: String,
    /// The message's `seq` in the conversation (absent for invitations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The recipient's inbox sequence number of the event.
    pub iseq: u64,
    pub reason: &'static str,
    /// The user's total unread messages (muted conversations excluded): the badge.
    pub unread: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Notification {
    /// Builds the push for `job`; `max_body_chars` cuts long text (providers take 4 KB).
    pub fn for_job(job: &PushJob, unread: u64, max_body_chars: usize) -> Notification {
        let full = job.target.full_text;
        let (event_id, seq, sender, body) = match &job.event {
            Some(EventBody::Message(m)) => (
                m.id.clone(),
                Some(m.seq),
                full.then(|| m.sender.clone()),
                full.then(|| m.body.chars().take(max_body_chars).collect()),
            ),
            Some(EventBody::Invitation(i)) => (
                i.id.clone(),
                None,
                full.then(|| i.by.clone()),
                full.then(|| i.name.clone()).flatten(),
            ),
            // The event was not readable: the ids the queue row has still let the app
            // sync (its `iseq` is the one to sync up to).
            _ => (String::new(), None, None, None),
        };
        Notification {
            event_id,
            conversation: job.conversation.clone(),
            seq,
            iseq: job.iseq,
            reason: job.reason.as_str(),
            unread,
            sender,
            body,
        }
    }

    pub fn is_invitation(&self) -> bool {
        self.reason == PushReason::Invitation.as_str()
    }

    /// A badge-only push: nothing to show, only the count to set (a background push).
    pub fn is_badge(&self) -> bool {
        self.reason == PushReason::Badge.as_str()
    }
}
