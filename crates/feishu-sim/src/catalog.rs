//! The fake's own reading of Feishu's server API, from the repository's data
//! files (compiled in with `include_str!`, parsed once on first use):
//!
//! - `data/feishu-api-limits.tsv`: every endpoint (method, path template
//!   with `:param` segments, documented windows, doc page), see
//!   [`endpoints`];
//! - `data/throttle-codes.tsv`: Feishu's throttle and budget codes with
//!   their documented HTTP statuses, see [`throttle_code`];
//! - `data/budget-exempt.tsv`: the path prefixes Feishu does not count
//!   against a custom app's monthly budget, see [`budget_exempt`].
//!
//! The fake is the judge the gateway's tests measure against, so none of
//! this is shared with the gateway: the parsing, the route matching and the
//! per-resource rules ([`ResourceRule`]) are the fake's own.
//!
//! # Route matching
//!
//! One tree of path segments per method. At each segment a static segment
//! wins over a parameter (`GET /open-apis/im/v1/chats/search` is not
//! `GET /open-apis/im/v1/chats/:chat_id`); when the static branch leads
//! nowhere the parameter branch is tried (backtracking), so the leftmost
//! static segment decides between overlapping templates. A parameter matches
//! one non-empty segment. A method with no template for the path answers
//! nothing (the fake's 404), whatever other methods have.

use std::collections::HashMap;
use std::str::Split;
use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};

const LIMITS_TSV: &str = include_str!("../../../data/feishu-api-limits.tsv");
const THROTTLE_TSV: &str = include_str!("../../../data/throttle-codes.tsv");
const EXEMPT_TSV: &str = include_str!("../../../data/budget-exempt.tsv");

/// The endpoints that kept the short names the fake gave them before the
/// catalog (tests and records use them): name, method, template.
const SEED_NAMES: [(&str, &str, &str); 3] = [
    (
        "put_top_notice",
        "POST",
        "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice",
    ),
    (
        "delete_top_notice",
        "POST",
        "/open-apis/im/v1/chats/:chat_id/top_notice/delete_top_notice",
    ),
    ("get_chat", "GET", "/open-apis/im/v1/chats/:chat_id"),
];

/// An endpoint's documented limit (the 接口频率限制 row of its doc page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    /// At most N calls in any interval of W, for each `(N, W)`: every
    /// window must hold.
    Windows(Vec<(u32, Duration)>),
    /// 特殊频控: a non-standard limit Feishu does not publish. The fake
    /// enforces a hidden one ([`SimConfig::special_limits`](crate::SimConfig::special_limits)).
    Special,
    /// The doc page states no limit.
    Unstated,
}

/// A limit Feishu puts on one resource (a chat, a message, a document, a
/// table…) on top of the endpoint's windows, as the fake enforces it.
///
/// Resource keys (for [`SimFeishu::resource_max_in_any_window`] and
/// [`ResourceViolation::key`]) are strings; the IM, docx and bitable ones
/// are shared by every app (a chat's 5/s is shared by all the bots in it),
/// the drive one is per app.
///
/// [`SimFeishu::resource_max_in_any_window`]: crate::SimFeishu::resource_max_in_any_window
/// [`ResourceViolation::key`]: crate::ResourceViolation::key
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceRule {
    /// `POST /open-apis/im/v1/messages`: 5/s per receiver, answered 230020.
    /// Key `<receive_id_type>:<receive_id>` (query `receive_id_type`, body
    /// field `receive_id`; a request without a string `receive_id` is not
    /// counted), e.g. `chat_id:oc_1`.
    MessageReceiver,
    /// `POST /open-apis/im/v1/messages/:message_id/reply`: 5/s per message
    /// replied to (the fake cannot know the message's chat), answered
    /// 230020. Key: the `message_id`.
    ReplyMessage,
    /// `PATCH /open-apis/im/v1/messages/:message_id` (update a card): 5/s
    /// per message, answered 230020. Key: the `message_id`.
    CardUpdate,
    /// Docx block edits (POST, PATCH, DELETE under
    /// `/open-apis/docx/v1/documents/:document_id/blocks`): 3/s per
    /// document, answered HTTP 429 / 99991400 with the `x-ogw-ratelimit-*`
    /// headers. Key: the `document_id`.
    DocxDocument,
    /// Bitable record writes (POST, PUT, DELETE under
    /// `/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records`,
    /// except the reads `records/search` and `records/batch_get`): one write
    /// in flight per table, answered 1254291 (HTTP 200). Key
    /// `<app_token>/<table_id>`.
    BitableTable,
    /// Drive uploads (POST `/open-apis/drive/v1/files/upload_*` and
    /// `/open-apis/drive/v1/medias/upload_*`): one in flight, 5/s and
    /// 10,000/day per app and endpoint, answered 1061045 (HTTP 200). Key
    /// `<app_id>[@<tenant_key>] <template>`.
    DriveUpload,
}

const FIVE_PER_SEC: &[(u32, Duration)] = &[(5, Duration::from_secs(1))];
const THREE_PER_SEC: &[(u32, Duration)] = &[(3, Duration::from_secs(1))];
const UPLOAD_WINDOWS: &[(u32, Duration)] = &[
    (5, Duration::from_secs(1)),
    (10_000, Duration::from_secs(86_400)),
];

impl ResourceRule {
    /// Every rule.
    pub const ALL: [ResourceRule; 6] = [
        ResourceRule::MessageReceiver,
        ResourceRule::ReplyMessage,
        ResourceRule::CardUpdate,
        ResourceRule::DocxDocument,
        ResourceRule::BitableTable,
        ResourceRule::DriveUpload,
    ];

    /// The rate windows per key (none for bitable tables).
    pub fn windows(self) -> &'static [(u32, Duration)] {
        match self {
            ResourceRule::MessageReceiver
            | ResourceRule::ReplyMessage
            | ResourceRule::CardUpdate => FIVE_PER_SEC,
            ResourceRule::DocxDocument => THREE_PER_SEC,
            ResourceRule::BitableTable => &[],
            ResourceRule::DriveUpload => UPLOAD_WINDOWS,
        }
    }

    /// How many calls may be in flight per key at once (`None`: no cap).
    pub fn max_in_flight(self) -> Option<u32> {
        match self {
            ResourceRule::BitableTable | ResourceRule::DriveUpload => Some(1),
            _ => None,
        }
    }

    /// Whether calls are writes that take [`SimConfig::write_time`](crate::SimConfig::write_time).
    pub(crate) fn is_write(self) -> bool {
        self.max_in_flight().is_some()
    }

    /// The code Feishu answers when the limit is hit.
    pub fn code(self) -> i64 {
        match self {
            ResourceRule::MessageReceiver
            | ResourceRule::ReplyMessage
            | ResourceRule::CardUpdate => 230_020,
            ResourceRule::DocxDocument => 99_991_400,
            ResourceRule::BitableTable => 1_254_291,
            ResourceRule::DriveUpload => 1_061_045,
        }
    }

    /// The HTTP status it comes with: 429 for the docx limit (per the docx
    /// pages), else the first status `data/throttle-codes.tsv` documents for
    /// [`code`](Self::code).
    pub fn status(self) -> StatusCode {
        match self {
            ResourceRule::DocxDocument => StatusCode::TOO_MANY_REQUESTS,
            _ => throttle_code(self.code()).map_or(StatusCode::BAD_REQUEST, |t| t.statuses[0]),
        }
    }

    /// The rule of `method` `template`, if it has one.
    fn of(method: &Method, template: &str) -> Option<ResourceRule> {
        const DOCX_BLOCKS: &str = "/open-apis/docx/v1/documents/:document_id/blocks";
        const RECORDS: &str = "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records";
        let m = method.as_str();
        match (m, template) {
            ("POST", "/open-apis/im/v1/messages") => Some(ResourceRule::MessageReceiver),
            ("POST", "/open-apis/im/v1/messages/:message_id/reply") => {
                Some(ResourceRule::ReplyMessage)
            }
            ("PATCH", "/open-apis/im/v1/messages/:message_id") => Some(ResourceRule::CardUpdate),
            ("POST" | "PATCH" | "DELETE", t) if under(t, DOCX_BLOCKS) => {
                Some(ResourceRule::DocxDocument)
            }
            ("POST" | "PUT" | "DELETE", t)
                if under(t, RECORDS)
                    && !t.ends_with("/records/search")
                    && !t.ends_with("/records/batch_get") =>
            {
                Some(ResourceRule::BitableTable)
            }
            ("POST", t)
                if t.starts_with("/open-apis/drive/v1/files/upload_")
                    || t.starts_with("/open-apis/drive/v1/medias/upload_") =>
            {
                Some(ResourceRule::DriveUpload)
            }
            _ => None,
        }
    }
}

/// Whether `template` is `prefix` or below it.
fn under(template: &str, prefix: &str) -> bool {
    template
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One endpoint of the catalog.
#[derive(Debug)]
pub struct Endpoint {
    /// Its position in [`endpoints`] (the order of the data file).
    pub index: usize,
    /// The method.
    pub method: Method,
    /// The path template, e.g. `/open-apis/im/v1/chats/:chat_id`.
    pub template: &'static str,
    /// The documented limit.
    pub limits: Limits,
    /// The doc page's title path.
    pub doc: &'static str,
    /// Its per-resource limit, if any.
    pub resource: Option<ResourceRule>,
    name: &'static str,
}

impl Endpoint {
    /// The name the fake's records and introspection use: `put_top_notice`,
    /// `delete_top_notice` and `get_chat` for the three endpoints the fake
    /// had before the catalog, `"<METHOD> <template>"` for every other one.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value of path parameter `name` (without the `:`) in `path`, a
    /// path this endpoint matched.
    pub fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        segments(self.template)
            .zip(segments(path))
            .find_map(|(t, p)| (t.strip_prefix(':') == Some(name)).then_some(p))
    }

    /// Whether the template has the path parameter `name`.
    pub fn has_param(&self, name: &str) -> bool {
        segments(self.template).any(|t| t.strip_prefix(':') == Some(name))
    }
}

/// One throttle or budget code of `data/throttle-codes.tsv`.
#[derive(Debug)]
pub struct ThrottleCode {
    /// Feishu's code.
    pub code: i64,
    /// The HTTP statuses it is documented with; the first is what the fake
    /// sends.
    pub statuses: Vec<StatusCode>,
    /// The narrowest key it concerns: `resource`, `endpoint` or `month`.
    pub pause: &'static str,
    /// Feishu's message.
    pub msg: &'static str,
    /// The products that send it.
    pub products: &'static str,
}

/// The parsed data files and the route trees.
struct Catalog {
    endpoints: Vec<Endpoint>,
    by_name: HashMap<&'static str, usize>,
    /// Bare templates: the endpoints that have each.
    by_template: HashMap<&'static str, Vec<usize>>,
    trees: Vec<(Method, Tree)>,
    throttle: Vec<ThrottleCode>,
    exempt: Vec<&'static str>,
}

static CATALOG: OnceLock<Catalog> = OnceLock::new();

fn catalog() -> &'static Catalog {
    CATALOG.get_or_init(|| match Catalog::parse() {
        Ok(c) => c,
        // The data files are compiled in; a unit test parses them.
        Err(e) => panic!("feishu-sim: the catalog data does not parse: {e}"),
    })
}

/// Every endpoint, in the order of `data/feishu-api-limits.tsv`.
pub fn endpoints() -> &'static [Endpoint] {
    &catalog().endpoints
}

/// The endpoint `method` `path` matches (the query excluded), if any.
pub fn route(method: &Method, path: &str) -> Option<&'static Endpoint> {
    let c = catalog();
    let tree = &c.trees.iter().find(|(m, _)| m == method)?.1;
    let index = tree.find(path)?;
    Some(&c.endpoints[index])
}

/// The endpoint called `name`: a short seed name (`put_top_notice`,
/// `delete_top_notice`, `get_chat`), `"<METHOD> <template>"`, or a bare
/// template that only one method has. The error says why not.
pub fn resolve(name: &str) -> Result<&'static Endpoint, String> {
    let c = catalog();
    if let Some(&i) = c.by_name.get(name) {
        return Ok(&c.endpoints[i]);
    }
    // "<METHOD> <template>" of a seed endpoint (whose name is short).
    if let Some((method, template)) = name.split_once(' ') {
        let found = c.by_template.get(template).and_then(|eps| {
            eps.iter()
                .map(|&i| &c.endpoints[i])
                .find(|ep| ep.method.as_str() == method)
        });
        if let Some(ep) = found {
            return Ok(ep);
        }
    }
    match c.by_template.get(name).map(Vec::as_slice) {
        Some([i]) => Ok(&c.endpoints[*i]),
        Some(several) => {
            let methods: Vec<&str> = several
                .iter()
                .map(|&i| c.endpoints[i].method.as_str())
                .collect();
            Err(format!(
                "feishu-sim: endpoint {name:?} is ambiguous: name it with its method ({})",
                methods.join(", ")
            ))
        }
        None => Err(format!(
            "feishu-sim: no endpoint {name:?} in the catalog (give a seed name, \
             \"<METHOD> <template>\" or a template of data/feishu-api-limits.tsv)"
        )),
    }
}

/// The throttle or budget code `code`, if `data/throttle-codes.tsv` lists it.
pub fn throttle_code(code: i64) -> Option<&'static ThrottleCode> {
    catalog().throttle.iter().find(|t| t.code == code)
}

/// Every code of `data/throttle-codes.tsv`, in its order.
pub fn throttle_codes() -> &'static [ThrottleCode] {
    &catalog().throttle
}

/// Whether Feishu leaves a call to `path` out of the monthly budget: the
/// path starts with a prefix of `data/budget-exempt.tsv`.
pub fn budget_exempt(path: &str) -> bool {
    catalog().exempt.iter().any(|p| path.starts_with(p))
}

/// The segments of a path or template after its leading `/`.
fn segments(path: &str) -> Split<'_, char> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

/// The data rows of a TSV: not empty, not a `#` comment, not the header
/// (whose first field is `header`), with their 1-based line numbers.
fn rows<'a>(tsv: &'a str, header: &'a str) -> impl Iterator<Item = (usize, Vec<&'a str>)> + 'a {
    tsv.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n + 1, l.split('\t').collect::<Vec<_>>()))
        .filter(move |(_, f)| f[0] != header)
}

/// `1000/60s,50/1s`, `special` or empty.
fn parse_limits(s: &str) -> Result<Limits, String> {
    match s.trim() {
        "" => return Ok(Limits::Unstated),
        "special" => return Ok(Limits::Special),
        _ => {}
    }
    let mut windows = Vec::new();
    for w in s.split(',') {
        let (n, per) = w
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("window {w:?} is not N/<secs>s"))?;
        let n: u32 = n.parse().map_err(|_| format!("bad count in {w:?}"))?;
        let secs: u64 = per
            .strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .filter(|&s| s > 0)
            .ok_or_else(|| format!("bad window length in {w:?}"))?;
        if n == 0 {
            return Err(format!("zero count in {w:?}"));
        }
        windows.push((n, Duration::from_secs(secs)));
    }
    Ok(Limits::Windows(windows))
}

impl Catalog {
    fn parse() -> Result<Catalog, String> {
        let mut endpoints = Vec::new();
        for (line, f) in rows(LIMITS_TSV, "method") {
            let at = |e: String| format!("data/feishu-api-limits.tsv line {line}: {e}");
            if f.len() != 4 {
                return Err(at(format!("{} fields, want 4", f.len())));
            }
            let method = Method::from_bytes(f[0].as_bytes())
                .map_err(|_| at(format!("bad method {:?}", f[0])))?;
            let template = f[1];
            if !template.starts_with("/open-apis/") {
                return Err(at(format!("template {template:?} not under /open-apis/")));
            }
            if segments(template).any(|s| s == ":") {
                return Err(at(format!("unnamed parameter in {template:?}")));
            }
            let limits = parse_limits(f[2]).map_err(at)?;
            // Parsed once per process: the full names live as long as it.
            let name: &'static str = SEED_NAMES
                .iter()
                .find(|(_, m, t)| *m == f[0] && *t == template)
                .map_or_else(
                    || -> &'static str {
                        Box::leak(format!("{method} {template}").into_boxed_str())
                    },
                    |(n, _, _)| *n,
                );
            endpoints.push(Endpoint {
                index: endpoints.len(),
                resource: ResourceRule::of(&method, template),
                method,
                template,
                limits,
                doc: f[3],
                name,
            });
        }

        let mut by_name = HashMap::new();
        let mut by_template: HashMap<&'static str, Vec<usize>> = HashMap::new();
        let mut trees: Vec<(Method, Tree)> = Vec::new();
        for ep in &endpoints {
            by_name.insert(ep.name, ep.index);
            by_template.entry(ep.template).or_default().push(ep.index);
            let tree = match trees.iter_mut().position(|(m, _)| *m == ep.method) {
                Some(i) => &mut trees[i].1,
                None => {
                    trees.push((ep.method.clone(), Tree::default()));
                    &mut trees.last_mut().expect("just pushed").1
                }
            };
            if let Some(other) = tree.insert(ep.template, ep.index) {
                return Err(format!(
                    "{} {} and {} match the same paths",
                    ep.method, ep.template, endpoints[other].template
                ));
            }
        }
        let mut throttle = Vec::new();
        for (line, f) in rows(THROTTLE_TSV, "code") {
            let at = |e: String| format!("data/throttle-codes.tsv line {line}: {e}");
            if f.len() != 5 {
                return Err(at(format!("{} fields, want 5", f.len())));
            }
            let code = f[0]
                .parse()
                .map_err(|_| at(format!("bad code {:?}", f[0])))?;
            let statuses = f[1]
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or_else(|| at(format!("bad status {s:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            throttle.push(ThrottleCode {
                code,
                statuses,
                pause: f[2],
                msg: f[3],
                products: f[4],
            });
        }

        let exempt = rows(EXEMPT_TSV, "prefix")
            .map(|(line, f)| {
                if f[0].starts_with("/open-apis/") {
                    Ok(f[0])
                } else {
                    Err(format!(
                        "data/budget-exempt.tsv line {line}: {:?} not under /open-apis/",
                        f[0]
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Catalog {
            endpoints,
            by_name,
            by_template,
            trees,
            throttle,
            exempt,
        })
    }
}

/// One method's templates as a tree of segments.
#[derive(Debug, Default)]
struct Tree {
    /// `nodes[0]` is the root (once anything is inserted).
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    statics: HashMap<&'static str, usize>,
    param: Option<usize>,
    /// The endpoint whose template ends here.
    leaf: Option<usize>,
}

impl Tree {
    /// Add `template` for endpoint `index`; returns the endpoint already
    /// there when another template has the same shape.
    fn insert(&mut self, template: &'static str, index: usize) -> Option<usize> {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0;
        for seg in segments(template) {
            let existing = if seg.starts_with(':') {
                self.nodes[at].param
            } else {
                self.nodes[at].statics.get(seg).copied()
            };
            at = match existing {
                Some(next) => next,
                None => {
                    let next = self.nodes.len();
                    self.nodes.push(Node::default());
                    if seg.starts_with(':') {
                        self.nodes[at].param = Some(next);
                    } else {
                        self.nodes[at].statics.insert(seg, next);
                    }
                    next
                }
            };
        }
        match self.nodes[at].leaf {
            Some(other) => Some(other),
            None => {
                self.nodes[at].leaf = Some(index);
                None
            }
        }
    }

    /// The endpoint `path` matches: static segments first, then parameters.
    fn find(&self, path: &str) -> Option<usize> {
        if self.nodes.is_empty() || !path.starts_with('/') {
            return None;
        }
        self.walk(0, segments(path))
    }

    fn walk(&self, at: usize, mut segs: Split<'_, char>) -> Option<usize> {
        let node = &self.nodes[at];
        let Some(seg) = segs.next() else {
            return node.leaf;
        };
        if let Some(&next) = node.statics.get(seg) {
            if let Some(hit) = self.walk(next, segs.clone()) {
                return Some(hit);
            }
        }
        match node.param {
            Some(next) if !seg.is_empty() => self.walk(next, segs),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(method: Method, path: &str) -> Option<&'static str> {
        route(&method, path).map(|e| e.template)
    }

    #[test]
    fn the_data_files_parse_whole() {
        let eps = endpoints();
        assert_eq!(eps.len(), 1559);
        assert!(eps.iter().enumerate().all(|(i, e)| e.index == i));
        let count = |f: fn(&Limits) -> bool| eps.iter().filter(|e| f(&e.limits)).count();
        assert_eq!(count(|l| matches!(l, Limits::Special)), 98);
        assert_eq!(count(|l| matches!(l, Limits::Unstated)), 126);
        let put = resolve("put_top_notice").expect("seed name");
        assert_eq!(
            put.limits,
            Limits::Windows(vec![
                (1000, Duration::from_secs(60)),
                (50, Duration::from_secs(1))
            ])
        );
        assert_eq!(put.method, Method::POST);
        assert!(put.doc.contains("群置顶"), "{}", put.doc);
        // Every endpoint routes to itself with its parameters filled in.
        for e in eps {
            let path = e
                .template
                .split('/')
                .map(|s| if s.starts_with(':') { "x1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            assert_eq!(
                route(&e.method, &path).map(|r| r.index),
                Some(e.index),
                "{path}"
            );
            assert_eq!(resolve(e.name()).map(|r| r.index), Ok(e.index));
        }

        let codes = throttle_codes();
        assert!(codes.len() >= 30);
        let limited = throttle_code(99991400).expect("99991400");
        assert_eq!(
            limited.statuses,
            [StatusCode::TOO_MANY_REQUESTS, StatusCode::BAD_REQUEST]
        );
        assert_eq!(limited.msg, "request trigger frequency limit");
        assert_eq!(
            throttle_code(1254290).map(|t| t.statuses[0]),
            Some(StatusCode::OK)
        );
        assert_eq!(throttle_code(99991403).map(|t| t.pause), Some("month"));
        assert!(throttle_code(0).is_none());
    }

    #[test]
    fn static_segments_win_over_parameters() {
        assert_eq!(
            routed(Method::GET, "/open-apis/im/v1/chats/search"),
            Some("/open-apis/im/v1/chats/search")
        );
        assert_eq!(
            routed(Method::GET, "/open-apis/im/v1/chats/oc_1"),
            Some("/open-apis/im/v1/chats/:chat_id")
        );
        // One level deeper: a static tail under a parameter.
        assert_eq!(
            routed(
                Method::GET,
                "/open-apis/im/v1/chats/oc_1/members/is_in_chat"
            ),
            Some("/open-apis/im/v1/chats/:chat_id/members/is_in_chat")
        );
        assert_eq!(
            routed(Method::GET, "/open-apis/im/v1/chats/oc_1/members"),
            Some("/open-apis/im/v1/chats/:chat_id/members")
        );
        // A static segment that leads nowhere falls back to the parameter:
        // `search` as a chat id, followed by `members`.
        assert_eq!(
            routed(Method::GET, "/open-apis/im/v1/chats/search/members"),
            Some("/open-apis/im/v1/chats/:chat_id/members")
        );
        assert_eq!(
            routed(
                Method::POST,
                "/open-apis/bitable/v1/apps/A/tables/T/records/batch_create"
            ),
            Some("/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/batch_create")
        );
    }

    #[test]
    fn methods_empty_segments_and_trailing_slashes() {
        // The method picks the tree: DELETE has no `/im/v1/chats`.
        assert_eq!(routed(Method::DELETE, "/open-apis/im/v1/chats"), None);
        assert_eq!(routed(Method::GET, "/open-apis/im/v1/chats/"), None);
        assert_eq!(routed(Method::GET, "/open-apis/im/v1/chats//members"), None);
        assert_eq!(routed(Method::GET, "/open-apis/im/v1/chats/oc_1/"), None);
        assert_eq!(routed(Method::GET, "open-apis/im/v1/chats"), None);
        assert_eq!(routed(Method::GET, "/open-apis/not/in/the/catalog"), None);
        // Templates with a trailing slash need it.
        assert_eq!(
            routed(Method::POST, "/open-apis/message/v4/batch_send/"),
            Some("/open-apis/message/v4/batch_send/")
        );
        assert_eq!(
            routed(Method::POST, "/open-apis/message/v4/batch_send"),
            None
        );
    }

    #[test]
    fn names_and_parameters() {
        let chat = resolve("GET /open-apis/im/v1/chats/:chat_id").expect("full name");
        assert_eq!(chat.name(), "get_chat");
        assert_eq!(
            chat.param("/open-apis/im/v1/chats/oc_9", "chat_id"),
            Some("oc_9")
        );
        assert_eq!(chat.param("/open-apis/im/v1/chats/oc_9", "nope"), None);
        assert!(chat.has_param("chat_id"));
        let search = resolve("/open-apis/im/v1/chats/search").expect("one method");
        assert_eq!(search.name(), "GET /open-apis/im/v1/chats/search");
        let err = resolve("/open-apis/im/v1/messages").expect_err("GET and POST");
        assert!(
            err.contains("ambiguous") && err.contains("GET") && err.contains("POST"),
            "{err}"
        );
        let err = resolve("post_top_notice").expect_err("unknown");
        assert!(err.contains("no endpoint"), "{err}");
    }

    #[test]
    fn resource_rules_are_where_feishu_puts_them() {
        let rule = |name: &str| resolve(name).expect(name).resource;
        assert_eq!(
            rule("POST /open-apis/im/v1/messages"),
            Some(ResourceRule::MessageReceiver)
        );
        assert_eq!(rule("GET /open-apis/im/v1/messages"), None);
        assert_eq!(
            rule("POST /open-apis/im/v1/messages/:message_id/reply"),
            Some(ResourceRule::ReplyMessage)
        );
        assert_eq!(
            rule("PATCH /open-apis/im/v1/messages/:message_id"),
            Some(ResourceRule::CardUpdate)
        );
        assert_eq!(rule("PUT /open-apis/im/v1/messages/:message_id"), None);
        assert_eq!(
            rule("PATCH /open-apis/docx/v1/documents/:document_id/blocks/batch_update"),
            Some(ResourceRule::DocxDocument)
        );
        assert_eq!(
            rule("GET /open-apis/docx/v1/documents/:document_id/blocks"),
            None
        );
        assert_eq!(
            rule("POST /open-apis/bitable/v1/apps/:app_token/tables/:table_id/records"),
            Some(ResourceRule::BitableTable)
        );
        assert_eq!(
            rule("POST /open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/search"),
            None
        );
        assert_eq!(
            rule("/open-apis/drive/v1/medias/upload_part"),
            Some(ResourceRule::DriveUpload)
        );
        let count = |r: ResourceRule| endpoints().iter().filter(|e| e.resource == Some(r)).count();
        assert_eq!(count(ResourceRule::DocxDocument), 4);
        assert_eq!(count(ResourceRule::BitableTable), 6);
        assert_eq!(count(ResourceRule::DriveUpload), 8);
        // Statuses from data/throttle-codes.tsv.
        assert_eq!(
            ResourceRule::MessageReceiver.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(ResourceRule::BitableTable.status(), StatusCode::OK);
        assert_eq!(ResourceRule::DriveUpload.status(), StatusCode::OK);
        assert_eq!(
            ResourceRule::DocxDocument.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn budget_exemptions() {
        assert!(budget_exempt("/open-apis/contact/v3/users/ou_1"));
        assert!(budget_exempt(
            "/open-apis/auth/v3/tenant_access_token/internal"
        ));
        assert!(!budget_exempt("/open-apis/im/v1/messages"));
        assert!(!budget_exempt("/open-apis/contactx/v3/users"));
    }
}
