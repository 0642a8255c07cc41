//! The chat top-notice family: pin a message or the announcement on top of
//! a chat, and take it down. Everything the gateway knows of these two
//! endpoints beyond the data file (which gives their limits, 50 per second
//! AND 1000 per minute per app) is here: id and body contract.

use http::Method;

use super::Builtin;
use crate::validate::{BodyRule, Contract, Field, HeaderRule, Param, Shape, UnknownFields};

/// The family's entries, for [`super::BUILTIN`].
pub const ENDPOINTS: &[Builtin] = &[
    Builtin {
        id: PUT_TOP_NOTICE,
        method: Method::POST,
        template: "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice",
        contract: Some(put_top_notice),
        max_body_bytes: None,
    },
    Builtin {
        id: DELETE_TOP_NOTICE,
        method: Method::POST,
        template: "/open-apis/im/v1/chats/:chat_id/top_notice/delete_top_notice",
        contract: Some(delete_top_notice),
        max_body_bytes: None,
    },
];

/// Route id of `put_top_notice`.
pub const PUT_TOP_NOTICE: &str = "im.v1.chat_top_notice.put_top_notice";
/// Route id of `delete_top_notice`.
pub const DELETE_TOP_NOTICE: &str = "im.v1.chat_top_notice.delete_top_notice";

/// `POST /open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice`
/// pin a message (`action_type` `"1"`, with `message_id`) or
/// the group announcement (`"2"`, the default).
pub fn put_top_notice() -> Contract {
    let notice = Shape::object(vec![
        Field::optional("action_type", Shape::one_of(&["1", "2"])).with_default("2"),
        Field::required_when("message_id", Shape::prefixed("om_"), "action_type", "1"),
    ]);
    Contract {
        params: vec![Param::id("chat_id", "oc_")],
        headers: vec![HeaderRule::json_content_type()],
        body: BodyRule::required(Shape::object(vec![Field::required(
            "chat_top_notice",
            Shape::array(1, notice),
        )])),
        unknown_fields: UnknownFields::Allow,
    }
}

/// `POST /open-apis/im/v1/chats/:chat_id/top_notice/delete_top_notice`:
/// no body. The official SDKs send an empty body, `{}`, or no body and no
/// `Content-Type`, so the body may be empty or any JSON object, and no
/// header is required.
pub fn delete_top_notice() -> Contract {
    Contract {
        params: vec![Param::id("chat_id", "oc_")],
        headers: vec![],
        body: BodyRule::optional(Shape::object(vec![])),
        unknown_fields: UnknownFields::Allow,
    }
}
