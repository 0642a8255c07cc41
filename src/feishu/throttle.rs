//! Feishu's throttle answers, as data: `data/throttle-codes.tsv` lists every
//! code that means "too many requests" (or "no budget left"), the HTTP
//! statuses it comes with, and the narrowest key it concerns. The gateway
//! recognises them by the body `code`, whatever the status: 99991400 comes
//! with 429 or 400, 1254290 and 1061045 often with 200.

use std::sync::OnceLock;

/// The data file, as compiled in.
pub const THROTTLE_TSV: &str = include_str!("../../data/throttle-codes.tsv");

/// What a throttle code concerns: the key to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The route's per-resource key (a chat, a document, a table) when the
    /// route has one, else the (app[, tenant], endpoint) key.
    Resource,
    /// The (app[, tenant], endpoint) key.
    Endpoint,
    /// The app's monthly budget: not transient, nothing is sent until the
    /// month turns.
    Month,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// Feishu's code.
    pub code: i64,
    /// The HTTP statuses it is documented with.
    pub statuses: Vec<u16>,
    /// What to pause.
    pub pause: Pause,
    /// Feishu's message.
    pub msg: &'static str,
}

/// Every row of `tsv` (`#` comments, a header, then
/// `code<TAB>http<TAB>pause<TAB>msg<TAB>where`), or the first bad line.
pub fn parse(tsv: &'static str) -> Result<Vec<Throttle>, String> {
    let mut rows = Vec::new();
    let mut header = false;
    for (n, line) in tsv.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !header {
            header = true;
            continue;
        }
        let at = |e: &str| format!("throttle data line {}: {e}", n + 1);
        let cols: Vec<&'static str> = line.split('\t').collect();
        let [code, http, pause, msg, ..] = cols[..] else {
            return Err(at("needs code, http, pause and msg"));
        };
        rows.push(Throttle {
            code: code.parse().map_err(|_| at("bad code"))?,
            statuses: http
                .split(',')
                .map(|s| s.trim().parse().map_err(|_| at("bad status")))
                .collect::<Result<_, _>>()?,
            pause: match pause {
                "resource" => Pause::Resource,
                "endpoint" => Pause::Endpoint,
                "month" => Pause::Month,
                _ => return Err(at("pause is resource, endpoint or month")),
            },
            msg,
        });
    }
    Ok(rows)
}

/// The compiled-in table.
pub fn table() -> &'static [Throttle] {
    static TABLE: OnceLock<Vec<Throttle>> = OnceLock::new();
    TABLE.get_or_init(|| parse(THROTTLE_TSV).expect("data/throttle-codes.tsv parses (tested)"))
}

/// The throttle row of `code`, if it is one.
pub fn classify(code: i64) -> Option<&'static Throttle> {
    table().iter().find(|t| t.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_names_the_documented_codes() {
        let t = parse(THROTTLE_TSV).unwrap();
        assert!(t.len() >= 30, "{}", t.len());
        let row = |c| classify(c).unwrap();
        assert_eq!(row(99991400).statuses, [429, 400]);
        assert_eq!(row(230020).pause, Pause::Resource);
        assert_eq!(row(1254290).statuses, [200, 400, 429]);
        assert_eq!(row(1061045).statuses, [200]);
        assert_eq!(row(99991403).pause, Pause::Month);
        assert_eq!(row(99991406).pause, Pause::Month);
        for c in [
            11232, 11233, 11247, 232019, 230047, 230048, 190004, 190005, 190010,
        ] {
            assert!(classify(c).is_some(), "{c}");
        }
        for c in [1000004, 1000005, 90217, 1254291, 1254112] {
            assert!(classify(c).is_some(), "{c}");
        }
        assert!(classify(0).is_none());
        assert!(classify(99991663).is_none(), "token invalid is no throttle");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse("code\thttp\tpause\tmsg\n1\t429\tsometimes\tx\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("pause"), "{e}");
    }
}
