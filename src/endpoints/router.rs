//! Request path → catalog route, through `matchit` (a radix tree per
//! method): static segments win over parameters (`/im/v1/chats/search` is
//! not `/im/v1/chats/:chat_id`), whatever the insertion order, and a match
//! allocates nothing for templates of up to three parameters (matchit keeps
//! them inline; the four 4-parameter templates of the catalog spill to a
//! small vector).
//!
//! Parameter names do not take part in matching: a template is inserted in
//! its *shape*, each parameter renamed after its position, so
//! `/a/:x/b` and `/a/:y/b` are the same route (the catalog treats them as
//! one; see [`shape`]).

use http::Method;

/// The catalog's matcher: one radix tree per method.
#[derive(Debug, Clone, Default)]
pub struct Router {
    by_method: Vec<(Method, matchit::Router<usize>)>,
}

/// The template's shape: `:name` segments become `{p<position>}` (matchit's
/// syntax) and literal braces are escaped. Two templates with the same shape
/// match the same paths.
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
    /// Adds `template` for `method`, answering `index`. Errors when a route
    /// of the same shape is already there, or matchit refuses the template.
    pub fn insert(&mut self, method: &Method, template: &str, index: usize) -> Result<(), String> {
        let pos = match self.by_method.iter().position(|(m, _)| m == method) {
            Some(p) => p,
            None => {
                self.by_method
                    .push((method.clone(), matchit::Router::new()));
                self.by_method.len() - 1
            }
        };
        self.by_method[pos]
            .1
            .insert(shape(template), index)
            .map_err(|e| format!("{method} {template}: {e}"))
    }

    /// The index of the route matching `method` and `path`.
    #[inline]
    pub fn at(&self, method: &Method, path: &str) -> Option<usize> {
        let (_, tree) = self.by_method.iter().find(|(m, _)| m == method)?;
        tree.at(path).ok().map(|m| *m.value)
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
    fn the_same_shape_twice_is_refused() {
        let mut r = Router::default();
        r.insert(&Method::GET, "/open-apis/a/:x", 0).unwrap();
        assert!(r.insert(&Method::GET, "/open-apis/a/:y", 1).is_err());
        assert!(r.insert(&Method::POST, "/open-apis/a/:y", 1).is_ok());
    }
}
