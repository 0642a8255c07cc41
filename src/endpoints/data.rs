//! The catalog's data: `data/feishu-api-limits.tsv`, Feishu's documented
//! limit of every server API endpoint (1,559 rows: method, path template,
//! limits, doc page), compiled into the binary and read once at start.
//!
//! `limits` is a comma-separated list of `N/W` windows that must all hold
//! (`1000/60s,50/1s`), `special` (特殊频控: a limit Feishu does not publish)
//! or empty (the page states none). The file is Feishu's facts, kept as
//! data: a limit that changes is one line to edit (or a `[[routes]]` entry
//! in the config).

use http::Method;

use crate::quota::Window;

/// The data file, as compiled in.
pub const LIMITS_TSV: &str = include_str!("../../data/feishu-api-limits.tsv");

/// What Feishu documents as an endpoint's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Documented {
    /// These windows, all at once, per app (per tenant for store apps).
    Windows(Vec<Window>),
    /// 特殊频控: a limit exists but is not published.
    Special,
    /// The page states no limit.
    None,
}

/// One row of the data file.
#[derive(Debug, Clone)]
pub struct Row {
    /// HTTP method.
    pub method: Method,
    /// Path template, `:name` segments for parameters.
    pub template: &'static str,
    /// The documented limit.
    pub limits: Documented,
    /// The doc page's title (product / section / page).
    pub doc: &'static str,
}

/// Every row of `tsv` (the format of [`LIMITS_TSV`]: `#` comment lines, a
/// header line, then `method<TAB>path<TAB>limits<TAB>doc`), or the first bad
/// line with its number.
pub fn parse(tsv: &'static str) -> Result<Vec<Row>, String> {
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
        let at = |e: String| format!("data line {}: {e}", n + 1);
        let mut cols = line.split('\t');
        let (Some(method), Some(template), Some(limits)) = (cols.next(), cols.next(), cols.next())
        else {
            return Err(at("needs method, path and limits".into()));
        };
        let method: Method = method
            .parse()
            .map_err(|_| at(format!("bad method {method:?}")))?;
        let limits = match limits.trim() {
            "" => Documented::None,
            "special" => Documented::Special,
            list => Documented::Windows(
                list.split(',')
                    .map(|w| w.trim().parse::<Window>().map_err(|e| at(e.to_string())))
                    .collect::<Result<_, _>>()?,
            ),
        };
        rows.push(Row {
            method,
            template,
            limits,
            doc: cols.next().unwrap_or(""),
        });
    }
    Ok(rows)
}

/// The rows of the compiled-in data file.
pub fn rows() -> Vec<Row> {
    parse(LIMITS_TSV).expect("data/feishu-api-limits.tsv parses (tested)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_file_parses_completely() {
        let rows = parse(LIMITS_TSV).unwrap();
        assert_eq!(rows.len(), 1559);
        let count = |f: fn(&Documented) -> bool| rows.iter().filter(|r| f(&r.limits)).count();
        assert_eq!(count(|l| matches!(l, Documented::Special)), 98);
        assert_eq!(count(|l| matches!(l, Documented::None)), 126);
        let msg = rows
            .iter()
            .find(|r| r.method == Method::POST && r.template == "/open-apis/im/v1/messages")
            .unwrap();
        let Documented::Windows(ws) = &msg.limits else {
            panic!("windows")
        };
        let ws: Vec<String> = ws.iter().map(ToString::to_string).collect();
        assert_eq!(ws, ["1000/60s", "50/1s"]);
        assert_eq!(msg.doc, "消息/消息管理/发送消息");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e =
            parse("method\tpath\tlimits\tdoc\nGET\t/open-apis/x\t5/fortnight\td\n").unwrap_err();
        assert!(e.starts_with("data line 2:"), "{e}");
        assert!(parse("h\nGET\n").unwrap_err().contains("needs method"));
    }
}
