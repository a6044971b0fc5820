//! Property tests: every command and event survives both codecs unchanged, and decoding
//! arbitrary bytes never panics.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tidings_core::protocol::event::*;
use tidings_core::protocol::{CborCodec, Codec, CodecError, Command, JsonCodec, Op, WireFormat};

fn id() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|n| ulid::Ulid::from(n).to_string())
}

fn client_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, escapes and astral-plane emoji.
    any::<String>()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            id(),
            text(),
            option::of(id()),
            vec(id(), 0..4),
            option::of(id())
        )
            .prop_map(|(conv, body, reply_to, mentions, attachment)| Op::Send {
                conv,
                body,
                reply_to,
                mentions,
                attachment
            }),
        (id(), text()).prop_map(|(msg, body)| Op::Edit { msg, body }),
        id().prop_map(|msg| Op::Delete { msg }),
        (id(), text()).prop_map(|(msg, emoji)| Op::React { msg, emoji }),
        (id(), text()).prop_map(|(msg, emoji)| Op::Unreact { msg, emoji }),
        (id(), any::<u64>()).prop_map(|(conv, seq)| Op::Delivered { conv, seq }),
        (id(), any::<u64>()).prop_map(|(conv, seq)| Op::Read { conv, seq }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    (client_id(), op()).prop_map(|(id, op)| Command { v: 1, id, op })
}

fn message() -> impl Strategy<Value = MessageView> {
    (
        (id(), id(), any::<u64>(), id(), client_id()),
        (
            prop_oneof![
                Just(MessageKind::Text),
                Just(MessageKind::Image),
                Just(MessageKind::File),
                Just(MessageKind::Voice),
                Just(MessageKind::System)
            ],
            text(),
            option::of(id()),
            vec(id(), 0..3),
        ),
        (
            option::of((
                id(),
                "[a-z]+/[a-z0-9.+-]+",
                any::<u64>(),
                option::of(text()),
            )),
            any::<i64>(),
            option::of(any::<i64>()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (id, conv, seq, sender, client_msg_id),
                (kind, body, reply_to, mentions),
                (attachment, created_at, edited_at, deleted),
            )| MessageView {
                id,
                conv,
                seq,
                sender,
                client_msg_id,
                kind,
                body,
                reply_to,
                mentions,
                attachment: attachment.map(|(id, mime, size, name)| AttachmentView {
                    id,
                    mime,
                    size,
                    name,
                }),
                created_at,
                edited_at,
                deleted,
            },
        )
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Owner), Just(Role::Admin), Just(Role::Member)]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::Malformed),
        Just(ErrorCode::UnknownOp),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::NotMember),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::Internal),
    ]
}

fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        message().prop_map(EventBody::Message),
        message().prop_map(EventBody::MessageUpdated),
        (id(), id(), id(), text(), any::<bool>()).prop_map(|(conv, msg, user, emoji, added)| {
            EventBody::Reaction(ReactionView {
                conv,
                msg,
                user,
                emoji,
                added,
            })
        }),
        (id(), id(), any::<bool>(), any::<u64>()).prop_map(|(conv, user, read, seq)| {
            let kind = if read {
                ReceiptKind::Read
            } else {
                ReceiptKind::Delivered
            };
            EventBody::Receipt(ReceiptView {
                conv,
                user,
                kind,
                seq,
            })
        }),
        (id(), id(), role(), option::of(id())).prop_map(|(conv, user, role, by)| {
            EventBody::Member(MemberView {
                conv,
                user,
                action: MemberAction::Joined,
                role,
                by,
            })
        }),
        (
            id(),
            option::of(text()),
            option::of(text()),
            id(),
            any::<i64>()
        )
            .prop_map(|(id, name, topic, created_by, created_at)| {
                EventBody::Conversation(ConversationView {
                    id,
                    kind: ConversationKind::Group,
                    name,
                    topic,
                    created_by,
                    created_at,
                })
            }),
        (option::of(id()), option::of(id()), option::of(any::<u64>()))
            .prop_map(|(conv, msg, seq)| EventBody::Ack(AckView { conv, msg, seq })),
        (error_code(), text())
            .prop_map(|(code, message)| EventBody::Error(ErrorView { code, message })),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (option::of(any::<u64>()), option::of(client_id()), body()).prop_map(|(seq, re, body)| Event {
        v: 1,
        seq,
        re,
        body,
    })
}

const CODECS: [&dyn Codec; 2] = [&JsonCodec, &CborCodec];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn commands_round_trip_in_both_codecs(cmd in command()) {
        for codec in CODECS {
            let bytes = codec.encode_command(&cmd).expect("encodes");
            prop_assert_eq!(WireFormat::sniff(&bytes), codec.format());
            if bytes.len() <= tidings_core::protocol::limits::MAX_COMMAND_BYTES {
                prop_assert_eq!(codec.decode_command(&bytes).expect("decodes"), cmd.clone());
            }
        }
    }

    #[test]
    fn events_round_trip_in_both_codecs(ev in event()) {
        for codec in CODECS {
            let bytes = codec.encode_event(&ev).expect("encodes");
            prop_assert_eq!(WireFormat::sniff(&bytes), codec.format());
            prop_assert_eq!(codec.decode_event(&bytes).expect("decodes"), ev.clone());
        }
    }

    #[test]
    fn cbor_is_never_larger_than_json_for_commands(cmd in command()) {
        let json = JsonCodec.encode_command(&cmd).expect("json");
        let cbor = CborCodec.encode_command(&cmd).expect("cbor");
        prop_assert!(cbor.len() <= json.len(), "cbor {} > json {}", cbor.len(), json.len());
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        for codec in CODECS {
            let _ = codec.decode_command(&bytes);
            let _ = codec.decode_event(&bytes);
        }
    }
}

#[test]
fn failures_are_classified() {
    let json = JsonCodec;
    assert!(matches!(
        json.decode_command(br#"{"op":"launch","id":"x"}"#),
        Err(CodecError::UnknownOp(op)) if op == "launch"
    ));
    assert!(matches!(
        json.decode_command(br#"{"v":9,"op":"send","id":"x"}"#),
        Err(CodecError::UnsupportedVersion(9))
    ));
    assert!(matches!(
        json.decode_command(b"{nope"),
        Err(CodecError::Malformed(_))
    ));
    assert!(matches!(
        json.decode_command(br#"{"op":"send","id":"x"}"#),
        Err(CodecError::Malformed(_))
    ));
    use tidings_core::protocol::codec::command_id;
    assert_eq!(
        command_id(br#"{"op":"launch","id":"x1"}"#).as_deref(),
        Some("x1")
    );
    assert_eq!(
        command_id(br#"{"op":"send","id":"bad/id"}"#),
        None,
        "only ids that are valid"
    );
    assert_eq!(command_id(b"garbage"), None);
    let huge = vec![b' '; tidings_core::protocol::limits::MAX_COMMAND_BYTES + 1];
    assert!(matches!(
        json.decode_command(&huge),
        Err(CodecError::TooLarge(_))
    ));
}
