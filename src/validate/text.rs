//! The forms of a string ([`Text`]), shared by path parameters, query
//! parameters and body strings: whether a value has its form, and the phrase
//! that says why not.

use super::contract::Text;

/// Why `s` does not have the form `text`, if it does not.
pub(crate) fn text_problem(text: &Text, s: &str) -> Option<String> {
    match text {
        Text::Any => None,
        Text::NonEmpty | Text::Prefix(_) | Text::Id(_) if s.is_empty() => {
            Some("must not be empty".into())
        }
        Text::NonEmpty => None,
        // Bytes bound characters: count them only when the bytes exceed.
        Text::MaxChars(n) if s.len() <= *n => None,
        Text::MaxChars(n) => {
            let chars = s.chars().count();
            (chars > *n).then(|| format!("must be at most {n} characters, got {chars}"))
        }
        Text::Prefix(p) => (!s.starts_with(p.as_str())).then(|| format!("must start with {p:?}")),
        Text::Id(p) => {
            let ok = s.strip_prefix(p.as_str()).is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())
            });
            (!ok).then(|| format!("must be {p:?} followed by letters and digits"))
        }
        Text::OneOf(values) => {
            (!values.iter().any(|v| v == s)).then(|| format!("must be {}", quoted_list(values)))
        }
    }
}

/// `"1" or "2"`, `"a", "b" or "c"`.
pub(crate) fn quoted_list(values: &[String]) -> String {
    let q: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    match q.split_last() {
        None => "(none)".into(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}
