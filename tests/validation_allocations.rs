//! Heap allocations of a contract check, counted by a global allocator of
//! this test binary: none for a valid top-notice request (the walk borrows
//! everything from the body); for a message, only `serde_json`'s unescape
//! buffers for `content` (a real content always has escapes), a few growth
//! steps of one buffer, so logarithmic in the content's length, never one
//! per field or per character.
//!
//! `cargo test --test validation_allocations -- --nocapture` prints them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use feishu_gateway::endpoints::{Catalog, Contracts};
use feishu_gateway::validate::RequestView;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method};

/// Counts the allocations (and reallocations) of the current thread, so
/// that tests running beside each other do not disturb the count.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations of one check of `body` sent as `method path?query`, which
/// must pass.
fn allocations(method: Method, path: &str, query: Option<&str>, body: &[u8]) -> usize {
    let catalog = Catalog::builtin();
    let contracts = Contracts::for_catalog(&catalog);
    let index = catalog.find(&method, path).expect("a catalog route");
    let contract = contracts.get(index).expect("a contract");
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let req = RequestView {
        route: catalog.route(index),
        path,
        query,
        headers: &headers,
        body,
    };
    let before = ALLOCATIONS.with(Cell::get);
    let verdict = contract.check(&req);
    let n = ALLOCATIONS.with(Cell::get) - before;
    assert!(verdict.is_ok(), "{verdict:?}");
    n
}

fn send(body: &[u8]) -> usize {
    allocations(
        Method::POST,
        "/open-apis/im/v1/messages",
        Some("receive_id_type=open_id"),
        body,
    )
}

#[test]
fn a_valid_top_notice_check_allocates_nothing() {
    let n = allocations(
        Method::POST,
        "/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c20/top_notice/put_top_notice",
        None,
        br#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#,
    );
    println!("put_top_notice: {n} allocations");
    assert_eq!(n, 0);
}

#[test]
fn a_message_check_allocates_only_for_content_and_boundedly() {
    // What the Python SDK sends: content's escapes (\") make serde_json
    // unescape it into its buffer, and the inner JSON's own escapes
    // (\u4e16, \n) into the inner deserializer's.
    let python = br#"{"receive_id": "ou_7d8a6e6df7621556ce0d21922b676706ccs", "msg_type": "text", "content": "{\"text\": \"hello <b>\\u4e16\\u754c</b>\\nline2\"}", "uuid": "a0d69e20-1dd1-458b-k525-dfeca4015204"}"#;
    let n = send(python);
    println!("send (Python SDK text): {n} allocations");
    assert!(n <= 8, "{n}");
    // Content without escapes at all: nothing to unescape, nothing
    // allocated.
    let n = send(br#"{"receive_id":"ou_1","msg_type":"text","content":"{}"}"#);
    println!("send (content \"{{}}\"): {n} allocations");
    assert_eq!(n, 0);
    // A 100 KB text: the buffer grows by doubling, a few steps, not one
    // allocation per character.
    let text = serde_json::json!({ "text": "x\n".repeat(50_000) }).to_string();
    let body = serde_json::json!({
        "receive_id": "ou_1", "msg_type": "text", "content": text,
    })
    .to_string();
    let n = send(body.as_bytes());
    println!("send ({} B body): {n} allocations", body.len());
    assert!(n <= 48, "{n}");
}
