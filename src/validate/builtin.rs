//! The built-in contracts, by route id, and the table that gives each
//! catalog route its contract.
//!
//! To add an endpoint: add its row to [`Catalog::builtin`](crate::endpoints::Catalog::builtin),
//! then an arm to [`builtin`] below returning its contract. Nothing else
//! changes: [`Contracts::for_catalog`] picks it up by id.

use super::contract::{BodyRule, Contract, Field, HeaderRule, Param, Shape, UnknownFields};
use crate::endpoints::Catalog;

/// Route id of `put_top_notice`.
pub const PUT_TOP_NOTICE: &str = "im.v1.chat_top_notice.put_top_notice";
/// Route id of `delete_top_notice`.
pub const DELETE_TOP_NOTICE: &str = "im.v1.chat_top_notice.delete_top_notice";

/// The built-in contract of the route `route_id`, if it has one.
pub fn builtin(route_id: &str) -> Option<Contract> {
    match route_id {
        PUT_TOP_NOTICE => Some(put_top_notice()),
        DELETE_TOP_NOTICE => Some(delete_top_notice()),
        _ => None,
    }
}

/// `POST /open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice`
/// (facts §7): pin a message (`action_type` `"1"`, with `message_id`) or
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

/// The contract of each catalog route, by route index.
#[derive(Debug, Clone)]
pub struct Contracts {
    by_route: Vec<Option<Contract>>,
}

impl Contracts {
    /// The built-in contract of every route of `catalog` that has one.
    pub fn for_catalog(catalog: &Catalog) -> Contracts {
        Contracts {
            by_route: catalog.routes().iter().map(|r| builtin(&r.id)).collect(),
        }
    }

    /// The contract of route `index`, if it has one.
    pub fn get(&self, index: usize) -> Option<&Contract> {
        self.by_route.get(index).and_then(Option::as_ref)
    }

    /// The contract of route `index`, to adjust per-route options
    /// (e.g. [`Contract::unknown_fields`]).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Contract> {
        self.by_route.get_mut(index).and_then(Option::as_mut)
    }
}
