//! The shape of Feishu's answers: `{"code": …, "msg": …, "data": …}`, with
//! `code` first. The gateway reads `code` without building the answer.

/// A refusal in Feishu's terms: its `code` and `msg`, or a gateway code and
/// what went wrong when Feishu could not be reached. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeishuError {
    /// Feishu's `code`, or a gateway code for transport failures.
    pub code: i64,
    /// Feishu's `msg`, or what went wrong.
    pub msg: String,
}

/// Reads the top-level integer `code` of a JSON object, skipping everything
/// else without building it.
pub fn read_code(bytes: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Code {
        code: Option<i64>,
    }
    match serde_json::from_slice::<Code>(bytes) {
        Ok(c) => c.code,
        Err(_) => scan_code(bytes),
    }
}

/// Finds `"code": <int>` in the first bytes of a (possibly truncated) JSON
/// object. Feishu writes `code` first, so this is enough for answers too
/// large to buffer.
pub fn scan_code(bytes: &[u8]) -> Option<i64> {
    let head = &bytes[..bytes.len().min(256)];
    let pos = head.windows(6).position(|w| w == b"\"code\"")?;
    let rest = &head[pos + 6..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_code_cheaply() {
        assert_eq!(
            read_code(br#"{"code":0,"msg":"success","data":{}}"#),
            Some(0)
        );
        assert_eq!(
            read_code(br#"{"msg":"x","data":{"a":[1,2]},"code":232011}"#),
            Some(232011)
        );
        assert_eq!(read_code(b"not json"), None);
        assert_eq!(
            scan_code(br#"{"code": 99991663, "msg": "trunc"#),
            Some(99991663)
        );
    }
}
