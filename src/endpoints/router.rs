//! Request path → catalog route, through a segment tree per method: static
//! segments win over parameters (`/im/v1/chats/search` is not
//! `/im/v1/chats/:chat_id`), whatever the insertion order, and when a
//! static branch leads nowhere the parameter branch at the same segment is
//! tried (backtracking, as a radix router does). A match walks the path's
//! segments in place: it allocates nothing, whatever the number of
//! parameters (matchit, used before, allocated when it had to remember a
//! parameter branch to come back to: 104 allocations in the 1,559 matches
//! of `cargo bench --bench catalog`, which now counts none). The tests check
//! it against matchit on every catalog path and on random ones.
//!
//! Parameter names do not take part in matching: a template is inserted in
//! its *shape*, each parameter a wildcard of one non-empty segment, so
//! `/a/:x/b` and `/a/:y/b` are the same route (the catalog treats them as
//! one; see [`shape`]).

use http::Method;

/// The catalog's matcher: one segment tree per method.
#[derive(Debug, Clone, Default)]
pub struct Router {
    by_method: Vec<(Method, Tree)>,
}

/// One method's templates, as a tree of path segments (split on `/`). The
/// static edges of every node are in one hash table keyed by (parent node,
/// segment): a step is one hash of the segment, computed while looking for
/// its end 8 bytes at a time, one probe, and one comparison of the text.
#[derive(Debug, Clone)]
struct Tree {
    /// Node 0 is the root (before the path's first segment).
    nodes: Vec<Node>,
    /// Open addressing with linear probing; a power of two long, at most
    /// half full.
    slots: Vec<Slot>,
    /// Edges in `slots`.
    edges: usize,
    /// The literal segments' bytes, where the slots point.
    text: Vec<u8>,
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    /// The child for a parameter segment.
    param: u32,
    /// The route of a template ending here.
    value: u32,
}

/// A static edge: `parent` --segment--> `child`; `child == NONE` is empty.
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    parent: u32,
    child: u32,
    start: u32,
    len: u32,
}

const EMPTY: Slot = Slot {
    hash: 0,
    parent: NONE,
    child: NONE,
    start: 0,
    len: 0,
};

const K: u64 = 0x517c_c1b7_2722_0a95;

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(K)
}

/// The first segment of `rest` (up to its first `/`, or all of it): its
/// length, and a hash of its bytes.
#[inline]
fn segment(rest: &[u8]) -> (usize, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const SLASHES: u64 = 0x2f2f_2f2f_2f2f_2f2f;
    let mut h = 0u64;
    let mut i = 0;
    while let Some(chunk) = rest.get(i..).and_then(|r| r.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let x = w ^ SLASHES;
        // The lowest byte flagged is the first `/` (flags above it may be
        // false, never below).
        let found = x.wrapping_sub(ONES) & !x & (ONES << 7);
        if found != 0 {
            let k = (found.trailing_zeros() / 8) as usize;
            let w = w & ((1u64 << (8 * k)) - 1);
            return (i + k, mix(h, w));
        }
        h = mix(h, w);
        i += 8;
    }
    let mut w = 0u64;
    let mut k = 0;
    while let Some(&b) = rest.get(i + k) {
        if b == b'/' {
            break;
        }
        w |= u64::from(b) << (8 * k);
        k += 1;
    }
    (i + k, mix(h, w))
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            nodes: vec![Node {
                param: NONE,
                value: NONE,
            }],
            slots: vec![EMPTY; 16],
            edges: 0,
            text: Vec::new(),
        }
    }
}

impl Tree {
    #[inline]
    fn key(parent: u32, len: usize, hash: u64) -> u64 {
        mix(mix(hash, len as u64), u64::from(parent))
    }

    /// The slot of the edge (`parent`, `segment`), or the empty slot where
    /// it would go.
    #[inline]
    fn probe(&self, parent: u32, segment: &[u8], key: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = (key >> 32) as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.child == NONE
                || (s.hash == key
                    && s.parent == parent
                    && self.text[s.start as usize..][..s.len as usize] == *segment)
            {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    fn new_node(&mut self) -> u32 {
        self.nodes.push(Node {
            param: NONE,
            value: NONE,
        });
        (self.nodes.len() - 1) as u32
    }

    fn child(&mut self, node: u32, segment: &str) -> u32 {
        if segment.starts_with(':') {
            let p = self.nodes[node as usize].param;
            if p != NONE {
                return p;
            }
            let p = self.new_node();
            self.nodes[node as usize].param = p;
            return p;
        }
        let b = segment.as_bytes();
        let (len, hash) = self::segment(b);
        debug_assert_eq!(len, b.len());
        let key = Tree::key(node, len, hash);
        let i = self.probe(node, b, key);
        if self.slots[i].child != NONE {
            return self.slots[i].child;
        }
        let child = self.new_node();
        self.slots[i] = Slot {
            hash: key,
            parent: node,
            child,
            start: self.text.len() as u32,
            len: len as u32,
        };
        self.text.extend_from_slice(b);
        self.edges += 1;
        if self.edges * 2 > self.slots.len() {
            let old = std::mem::take(&mut self.slots);
            self.slots = vec![EMPTY; old.len() * 2];
            let mask = self.slots.len() - 1;
            for s in old.into_iter().filter(|s| s.child != NONE) {
                let mut i = (s.hash >> 32) as usize & mask;
                while self.slots[i].child != NONE {
                    i = (i + 1) & mask;
                }
                self.slots[i] = s;
            }
        }
        child
    }

    /// The route of `rest` from `node`, where `rest` is what follows the
    /// node's segment (`None` at the path's end): the static child first,
    /// then the parameter child.
    fn find(&self, node: u32, rest: Option<&[u8]>) -> Option<usize> {
        let n = self.nodes[node as usize];
        let Some(rest) = rest else {
            return (n.value != NONE).then_some(n.value as usize);
        };
        let (len, hash) = segment(rest);
        let (segment, after) = match rest.get(len + 1..) {
            Some(after) => (&rest[..len], Some(after)),
            None => (rest, None),
        };
        let slot = self.slots[self.probe(node, segment, Tree::key(node, len, hash))];
        if slot.child != NONE {
            if let Some(found) = self.find(slot.child, after) {
                return Some(found);
            }
        }
        if n.param != NONE && len > 0 {
            return self.find(n.param, after);
        }
        None
    }
}

/// The template's shape: `:name` segments become `{p<position>}` and literal
/// braces are escaped (matchit's syntax, kept as the shape's spelling). Two
/// templates with the same shape match the same paths.
pub fn shape(template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    for (i, seg) in template.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg.starts_with(':') {
            out.push_str(&format!("{{p{i}}}"));
        } else {
            out.push_str(&seg.replace('{', "{{").replace('}', "}}"));
        }
    }
    out
}

impl Router {
    /// Adds `template` for `method`, answering `index`: segments starting
    /// with `:` are parameters (one non-empty segment each), the others
    /// literal. Errors when a route of the same shape is already there.
    pub fn insert(&mut self, method: &Method, template: &str, index: usize) -> Result<(), String> {
        let pos = match self.by_method.iter().position(|(m, _)| m == method) {
            Some(p) => p,
            None => {
                self.by_method.push((method.clone(), Tree::default()));
                self.by_method.len() - 1
            }
        };
        let tree = &mut self.by_method[pos].1;
        let mut node = 0;
        for segment in template.split('/') {
            node = tree.child(node, segment);
        }
        let value = u32::try_from(index)
            .ok()
            .filter(|v| *v != NONE)
            .ok_or_else(|| format!("{method} {template}: route index {index} out of range"))?;
        match tree.nodes[node as usize].value {
            NONE => {
                tree.nodes[node as usize].value = value;
                Ok(())
            }
            other => Err(format!(
                "{method} {template}: the same path shape as route {other}"
            )),
        }
    }

    /// The index of the route matching `method` and `path`.
    #[inline]
    pub fn at(&self, method: &Method, path: &str) -> Option<usize> {
        let (_, tree) = self.by_method.iter().find(|(m, _)| m == method)?;
        tree.find(0, Some(path.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(shape("/open-apis/a/:x/b/:y"), "/open-apis/a/{p3}/b/{p5}");
        assert_eq!(shape("/open-apis/a/:z/b/:w"), shape("/open-apis/a/:x/b/:y"));
        assert_eq!(shape("/open-apis/a{b}"), "/open-apis/a{{b}}");
    }

    #[test]
    fn static_segments_win_whatever_the_order() {
        for order in [[0, 1], [1, 0]] {
            let mut r = Router::default();
            let t = [
                "/open-apis/im/v1/chats/:chat_id",
                "/open-apis/im/v1/chats/search",
            ];
            for i in order {
                r.insert(&Method::GET, t[i], i).unwrap();
            }
            assert_eq!(r.at(&Method::GET, "/open-apis/im/v1/chats/search"), Some(1));
            assert_eq!(r.at(&Method::GET, "/open-apis/im/v1/chats/oc_1"), Some(0));
            assert_eq!(r.at(&Method::POST, "/open-apis/im/v1/chats/oc_1"), None);
            assert_eq!(r.at(&Method::GET, "/open-apis/im/v1/chats/"), None);
            assert_eq!(r.at(&Method::GET, "/open-apis/im/v1/chats/a/b"), None);
        }
    }

    #[test]
    fn a_static_branch_that_leads_nowhere_falls_back_to_the_parameter() {
        let mut r = Router::default();
        r.insert(&Method::GET, "/open-apis/a/:x/members", 0)
            .unwrap();
        r.insert(&Method::GET, "/open-apis/a/search", 1).unwrap();
        r.insert(&Method::GET, "/open-apis/a/search/:y/z", 2)
            .unwrap();
        assert_eq!(r.at(&Method::GET, "/open-apis/a/search"), Some(1));
        assert_eq!(r.at(&Method::GET, "/open-apis/a/search/members"), Some(0));
        assert_eq!(r.at(&Method::GET, "/open-apis/a/search/q/z"), Some(2));
        assert_eq!(r.at(&Method::GET, "/open-apis/a/search/q"), None);
        assert_eq!(r.at(&Method::GET, "/open-apis/a/search/"), None);
        assert_eq!(r.at(&Method::GET, "/open-apis/a//members"), None);
    }

    #[test]
    fn a_trailing_slash_is_part_of_the_template() {
        let mut r = Router::default();
        r.insert(&Method::POST, "/open-apis/drive/permission/v2/public/", 0)
            .unwrap();
        assert_eq!(
            r.at(&Method::POST, "/open-apis/drive/permission/v2/public/"),
            Some(0)
        );
        assert_eq!(
            r.at(&Method::POST, "/open-apis/drive/permission/v2/public"),
            None
        );
    }

    #[test]
    fn the_same_shape_twice_is_refused() {
        let mut r = Router::default();
        r.insert(&Method::GET, "/open-apis/a/:x", 0).unwrap();
        assert!(r.insert(&Method::GET, "/open-apis/a/:y", 1).is_err());
        assert!(r.insert(&Method::POST, "/open-apis/a/:y", 1).is_ok());
    }

    /// Every catalog template, and paths that probe each of its segments
    /// (a parameter filled with each literal found at that depth, with
    /// nothing, a segment dropped or added, a trailing slash), matches as
    /// matchit (the router used before, a dev-dependency now) matched it.
    #[test]
    fn the_whole_catalog_matches_as_matchit_did() {
        let catalog = crate::endpoints::Catalog::builtin();
        let mut ours = Router::default();
        let mut theirs: Vec<(Method, matchit::Router<usize>)> = Vec::new();
        let mut literals: Vec<std::collections::BTreeSet<&str>> = Vec::new();
        for (i, route) in catalog.routes().iter().enumerate() {
            ours.insert(&route.method, &route.template, i).unwrap();
            let pos = match theirs.iter().position(|(m, _)| *m == route.method) {
                Some(p) => p,
                None => {
                    theirs.push((route.method.clone(), matchit::Router::new()));
                    theirs.len() - 1
                }
            };
            theirs[pos].1.insert(shape(&route.template), i).unwrap();
            for (d, seg) in route.template.split('/').enumerate() {
                if literals.len() <= d {
                    literals.push(Default::default());
                }
                if !seg.starts_with(':') {
                    literals[d].insert(seg);
                }
            }
        }
        let matchit_at = |method: &Method, path: &str| {
            let (_, t) = theirs.iter().find(|(m, _)| m == method)?;
            t.at(path).ok().map(|m| *m.value)
        };
        let mut paths: Vec<String> = Vec::new();
        for route in catalog.routes() {
            let segs: Vec<&str> = route.template.split('/').collect();
            let filled = |d: usize, with: &str| {
                segs.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        if i == d {
                            with
                        } else if s.starts_with(':') {
                            "ab12cd"
                        } else {
                            s
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let base = filled(usize::MAX, "");
            paths.push(format!("{base}/"));
            paths.push(format!("{base}/x"));
            paths.push(base.rsplit_once('/').unwrap().0.to_string());
            paths.push(base);
            for (d, s) in segs.iter().enumerate() {
                if s.starts_with(':') {
                    paths.push(filled(d, ""));
                    for lit in &literals[d] {
                        paths.push(filled(d, lit));
                    }
                } else {
                    paths.push(filled(d, "zz"));
                }
            }
        }
        let methods = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ];
        let mut found = 0;
        for path in &paths {
            for m in &methods {
                let expected = matchit_at(m, path);
                assert_eq!(ours.at(m, path), expected, "{m} {path}");
                found += expected.is_some() as usize;
            }
        }
        assert!(
            paths.len() > 10_000 && found > 3_000,
            "{} paths, {found} found",
            paths.len()
        );
    }

    /// Random paths, of segments from the catalog's literals and random
    /// bytes of every length around the 8-byte steps of the segment scan,
    /// match as matchit matched them.
    #[test]
    fn random_paths_match_as_matchit_did() {
        let catalog = crate::endpoints::Catalog::builtin();
        let mut ours = Router::default();
        let mut theirs = matchit::Router::new();
        let mut pool: Vec<String> = vec![String::new()];
        for (i, route) in catalog.routes().iter().enumerate() {
            if route.method == Method::GET {
                ours.insert(&route.method, &route.template, i).unwrap();
                theirs.insert(shape(&route.template), i).unwrap();
            }
            pool.extend(
                route
                    .template
                    .split('/')
                    .filter(|s| !s.starts_with(':'))
                    .map(String::from),
            );
        }
        pool.sort();
        pool.dedup();
        let alphabet: Vec<char> = "ab/_-:%09zé{}".chars().collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut tried, mut found) = (0, 0);
        for _ in 0..50_000 {
            let route = &catalog.routes()[next(catalog.routes().len())];
            let mut segs: Vec<String> = route
                .template
                .split('/')
                .map(|s| {
                    if s.starts_with(':') {
                        "ab12cd".into()
                    } else {
                        s.into()
                    }
                })
                .collect();
            for _ in 0..1 + next(2) {
                let d = 1 + next(segs.len() - 1);
                segs[d] = match next(3) {
                    0 => pool[next(pool.len())].clone(),
                    1 => (0..next(20))
                        .map(|_| alphabet[next(alphabet.len())])
                        .collect(),
                    _ => segs[d].chars().take(next(segs[d].len() + 1)).collect(),
                };
            }
            let path = segs.join("/");
            let expected = theirs.at(&path).ok().map(|m| *m.value);
            assert_eq!(ours.at(&Method::GET, &path), expected, "{path}");
            tried += 1;
            found += expected.is_some() as usize;
        }
        assert!(found > 1_000, "{found} of {tried} found");
    }
}
