//! The calls Feishu does not count against the monthly budget:
//! `data/budget-exempt.tsv` (auth, event subscription, contact, Feishu
//! People, recruiting, ... as path prefixes), compiled in and read once.

/// The data file, as compiled in.
pub const EXEMPT_TSV: &str = include_str!("../../data/budget-exempt.tsv");

/// The exempt path prefixes.
#[derive(Debug, Clone)]
pub struct Exempt {
    /// `(prefix, category)`, each prefix under `/open-apis/` and ending
    /// with `/`.
    rows: Vec<(&'static str, &'static str)>,
}

impl Exempt {
    /// The compiled-in table.
    pub fn builtin() -> Exempt {
        // The data file is part of the build and tested below.
        Exempt::parse(EXEMPT_TSV).expect("data/budget-exempt.tsv parses")
    }

    /// Every row of `tsv` (`#` comments, a header line, then
    /// `prefix<TAB>category`), or the first bad line with its number.
    pub fn parse(tsv: &'static str) -> Result<Exempt, String> {
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
            let (prefix, category) = line
                .split_once('\t')
                .ok_or_else(|| format!("data line {}: needs prefix and category", n + 1))?;
            if !prefix.starts_with("/open-apis/") || !prefix.ends_with('/') || prefix.len() < 12 {
                return Err(format!(
                    "data line {}: {prefix:?} is not a path prefix like /open-apis/contact/",
                    n + 1
                ));
            }
            rows.push((prefix, category.trim()));
        }
        if rows.is_empty() {
            return Err("no exempt prefix".into());
        }
        Ok(Exempt { rows })
    }

    /// The category of `path` when Feishu does not count calls to it, e.g.
    /// `Some("contact")` for `/open-apis/contact/v3/users/ou_1`.
    pub fn category(&self, path: &str) -> Option<&'static str> {
        self.rows
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|&(_, category)| category)
    }

    /// Whether Feishu does not count calls to `path`.
    pub fn is_exempt(&self, path: &str) -> bool {
        self.category(path).is_some()
    }

    /// The prefixes, in file order.
    pub fn prefixes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.rows.iter().map(|&(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_file_lists_the_categories_of_feishu_platform_md() {
        let e = Exempt::builtin();
        for (path, category) in [
            ("/open-apis/auth/v3/tenant_access_token/internal", "auth"),
            ("/open-apis/authen/v1/oidc/access_token", "auth"),
            (
                "/open-apis/contact/v3/users/ou_7d8a6e6df7621556ce0d21922b676706ccs",
                "contact",
            ),
            ("/open-apis/event/v1/outbound_ip", "event subscription"),
            ("/open-apis/corehr/v1/employees", "Feishu People"),
            ("/open-apis/hire/v1/jobs", "recruiting"),
            ("/open-apis/aily/v1/sessions", "Aily"),
            (
                "/open-apis/optical_char_recognition/v1/image/basic_recognize",
                "AI",
            ),
        ] {
            assert_eq!(e.category(path), Some(category), "{path}");
        }
        // Counted: messages, chats, docs, bitable ...
        for path in [
            "/open-apis/im/v1/messages",
            "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice",
            "/open-apis/docx/v1/documents/doxcn1/blocks",
            "/open-apis/bitable/v1/apps/bascn1/tables",
            // A prefix is a whole segment: `contactx` is not `contact`.
            "/open-apis/contactx/v3/users",
            "/open-apis/contact",
        ] {
            assert!(!e.is_exempt(path), "{path}");
        }
        assert!(e.prefixes().all(|p| p.ends_with('/')));
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = Exempt::parse("# c\nprefix\tcategory\n/open-apis/a/\tx\n/im/\ty\n").unwrap_err();
        assert!(err.contains("line 4"), "{err}");
        let err = Exempt::parse("prefix\tcategory\n/open-apis/a/ x\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(Exempt::parse("prefix\tcategory\n").is_err());
    }
}
