//! Messages: send, reply and edit, the calls most services make. Everything
//! the gateway knows of them beyond the data file (which gives their limits,
//! 50 per second AND 1000 per minute per app) is here: ids and contracts.
//!
//! From Feishu's pages (发送消息 2025-08-12, 回复消息 2025-05-21, 编辑消息
//! 2024-09-25) and what the official SDKs send:
//!
//! - `content` is a JSON object serialized into a string
//!   (`"{\"text\":\"hi\"}"`), whatever `msg_type`; its inner shape per
//!   `msg_type` is Feishu's business, not checked here.
//! - Size: "text request body at most 150 KB; card and post (rich text)
//!   request body at most 30 KB" (230025). The gateway measures `content`
//!   (its text as decoded, in UTF-8 bytes), not the raw body: the content is
//!   never longer than the body, so whatever the gateway refuses is over
//!   Feishu's cap on either reading, while the raw body of a Python SDK
//!   call (which writes non-ASCII as `\uXXXX` escapes, 7 bytes a
//!   character once escaped again) can be twice its content. KB is read as
//!   1024 bytes, the larger reading. Feishu also counts a card template's
//!   data and style tags, which the gateway cannot see: it refuses a subset
//!   of what Feishu refuses, never more.
//! - Errors: 230001 for invalid parameters, 230025 for content too long.

use http::Method;

use super::Builtin;
use crate::feishu::codes;
use crate::validate::{
    BodyRule, Contract, Field, HeaderRule, LengthCap, Param, QueryParam, Shape, Text, UnknownFields,
};

/// The family's entries, for [`super::BUILTIN`].
pub const ENDPOINTS: &[Builtin] = &[
    Builtin {
        id: SEND_MESSAGE,
        method: Method::POST,
        template: "/open-apis/im/v1/messages",
        contract: Some(send_message),
        max_body_bytes: None,
    },
    Builtin {
        id: REPLY_MESSAGE,
        method: Method::POST,
        template: "/open-apis/im/v1/messages/:message_id/reply",
        contract: Some(reply_message),
        max_body_bytes: None,
    },
    Builtin {
        id: EDIT_MESSAGE,
        method: Method::PUT,
        template: "/open-apis/im/v1/messages/:message_id",
        contract: Some(edit_message),
        max_body_bytes: None,
    },
];

/// Route id of send (`POST /open-apis/im/v1/messages`).
pub const SEND_MESSAGE: &str = "im.v1.message.create";
/// Route id of reply.
pub const REPLY_MESSAGE: &str = "im.v1.message.reply";
/// Route id of edit (`PUT /open-apis/im/v1/messages/:message_id`).
pub const EDIT_MESSAGE: &str = "im.v1.message.update";

/// The kinds of `receive_id` (query `receive_id_type`).
pub const RECEIVE_ID_TYPES: &[&str] = &["open_id", "user_id", "union_id", "email", "chat_id"];

/// The `msg_type`s a message can be sent with. `system` (a divider in a
/// bot's one-to-one chat) is on the send page only.
pub const SEND_TYPES: &[&str] = &[
    "text",
    "post",
    "image",
    "file",
    "audio",
    "media",
    "sticker",
    "interactive",
    "share_chat",
    "share_user",
    "system",
];

/// The `msg_type`s of a reply: those of send but `system`.
pub const REPLY_TYPES: &[&str] = &[
    "text",
    "post",
    "image",
    "file",
    "audio",
    "media",
    "sticker",
    "interactive",
    "share_chat",
    "share_user",
];

/// The `msg_type`s a message can be edited to: text and post only (cards
/// are updated with PATCH, another endpoint).
pub const EDIT_TYPES: &[&str] = &["text", "post"];

/// Most bytes of a text message's content: 150 KB.
pub const TEXT_MAX_BYTES: usize = 150 * 1024;
/// Most bytes of a card's or a post's content: 30 KB.
pub const CARD_MAX_BYTES: usize = 30 * 1024;

/// Longest `uuid` (the dedup key), in characters.
pub const UUID_MAX_CHARS: usize = 50;

/// `POST /open-apis/im/v1/messages?receive_id_type=…`: send a message to a
/// user or a chat.
pub fn send_message() -> Contract {
    Contract {
        params: vec![],
        query: vec![QueryParam::required(
            "receive_id_type",
            Text::OneOf(RECEIVE_ID_TYPES.iter().map(|t| t.to_string()).collect()),
        )],
        headers: vec![HeaderRule::json_content_type()],
        body: BodyRule::required(Shape::object(vec![
            Field::required("receive_id", Shape::non_empty()),
            Field::required("msg_type", Shape::one_of(SEND_TYPES)),
            content(),
            Field::optional("uuid", Shape::max_chars(UUID_MAX_CHARS)),
        ])),
        unknown_fields: UnknownFields::Allow,
        code: codes::MESSAGE_INVALID_PARAM,
    }
}

/// `POST /open-apis/im/v1/messages/:message_id/reply`: reply to a message,
/// in its thread or not.
pub fn reply_message() -> Contract {
    Contract {
        params: vec![Param::id("message_id", "om_")],
        query: vec![],
        headers: vec![HeaderRule::json_content_type()],
        body: BodyRule::required(Shape::object(vec![
            Field::required("msg_type", Shape::one_of(REPLY_TYPES)),
            content(),
            Field::optional("reply_in_thread", Shape::Bool),
            Field::optional("uuid", Shape::max_chars(UUID_MAX_CHARS)),
        ])),
        unknown_fields: UnknownFields::Allow,
        code: codes::MESSAGE_INVALID_PARAM,
    }
}

/// `PUT /open-apis/im/v1/messages/:message_id`: edit a text or post
/// message.
pub fn edit_message() -> Contract {
    Contract {
        params: vec![Param::id("message_id", "om_")],
        query: vec![],
        headers: vec![HeaderRule::json_content_type()],
        body: BodyRule::required(Shape::object(vec![
            Field::required("msg_type", Shape::one_of(EDIT_TYPES)),
            content(),
        ])),
        unknown_fields: UnknownFields::Allow,
        code: codes::MESSAGE_INVALID_PARAM,
    }
}

/// `content`: a string holding a JSON object, at most 150 KB for text and
/// 30 KB for a card or a post.
fn content() -> Field {
    let too_long = codes::MESSAGE_CONTENT_TOO_LONG;
    Field::required("content", Shape::json_text(Shape::object(vec![])))
        .with_cap(LengthCap::when("msg_type", &["text"], TEXT_MAX_BYTES).with_code(too_long))
        .with_cap(
            LengthCap::when("msg_type", &["post", "interactive"], CARD_MAX_BYTES)
                .with_code(too_long),
        )
}
