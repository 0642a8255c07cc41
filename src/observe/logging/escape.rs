//! String values, quoted and escaped: as Rust's `{:?}` writes them (the
//! plain format) or as JSON string literals. Most values need no escape,
//! so they are scanned eight bytes at a time for a byte that does, and
//! written as they are when there is none.

use std::io::Write;

/// A string as Rust's `{:?}` writes it (what fmt's plain format does for
/// string fields): quoted, with `"` `\` and control characters escaped.
// The rare escaping is out of line: setting up for it would cost every
// value.
pub(super) fn push_debug_str(line: &mut Vec<u8>, s: &str) {
    // Printable ASCII but `"` and `\` is written as it is.
    let special = |b: u8| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\';
    if find(s.as_bytes(), 0, debug_special, special).is_none() {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        push_debug_str_escaped(line, s);
    }
}

#[cold]
#[inline(never)]
fn push_debug_str_escaped(line: &mut Vec<u8>, s: &str) {
    let _ = write!(line, "{s:?}");
}

/// A JSON string literal.
pub(super) fn push_json_str(line: &mut Vec<u8>, s: &str) {
    if find(s.as_bytes(), 0, json_special, json_special_byte).is_none() {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        push_json_str_escaped(line, s);
    }
}

fn json_special_byte(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cold]
#[inline(never)]
fn push_json_str_escaped(line: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    line.push(b'"');
    let mut start = 0;
    while let Some(i) = find(bytes, start, json_special, json_special_byte) {
        line.extend_from_slice(&bytes[start..i]);
        let b = bytes[i];
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => {
                let _ = write!(line, "\\u{b:04x}");
                b""
            }
        };
        line.extend_from_slice(escaped);
        start = i + 1;
    }
    line.extend_from_slice(&bytes[start..]);
    line.push(b'"');
}

/// Where the first byte at or after `from` that `special` flags is.
/// Eight bytes at a time first (most values need no escape at all):
/// `word_special` may flag a word with no such byte, never misses one.
#[inline(always)]
fn find(
    bytes: &[u8],
    from: usize,
    word_special: impl Fn(u64) -> bool,
    special: impl Fn(u8) -> bool,
) -> Option<usize> {
    let tail = &bytes[from..];
    let mut clean = 0;
    for word in tail.chunks_exact(8) {
        if word_special(word_at(word)) {
            break;
        }
        clean += 8;
    }
    let rest = &tail[clean..];
    // Fewer than eight left: their last eight (read again in part) in one.
    if rest.len() < 8 && bytes.len() >= 8 && !word_special(word_at(&bytes[bytes.len() - 8..])) {
        return None;
    }
    rest.iter()
        .position(|&b| special(b))
        .map(|p| from + clean + p)
}

// Byte tests on eight bytes at once (one `u64`, a byte per lane). Each
// test flags the lowest lane that holds such a byte, and may flag lanes
// above it (a borrow or carry crosses into the next lane), never a word
// with no such byte.

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

fn word_at(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_ne_bytes(word)
}

/// The lanes of `x` that are zero: their high bit is set.
fn zero_lanes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x
}

/// A lane is below 0x20, 0x7f or above, `"` or `\`: what `{:?}` escapes.
fn debug_special(x: u64) -> bool {
    // Below 0x20: subtracting 0x20 sets the high bit; 0x7f: adding 1
    // does; above: it is set.
    let outside = x.wrapping_sub(ONES * 0x20) | x.wrapping_add(ONES) | x;
    let quote = zero_lanes(x ^ (ONES * u64::from(b'"')));
    let backslash = zero_lanes(x ^ (ONES * u64::from(b'\\')));
    (outside | quote | backslash) & HIGHS != 0
}

/// A lane is a control character, `"` or `\`: what JSON escapes.
fn json_special(x: u64) -> bool {
    let control = x.wrapping_sub(ONES * 0x20) & !x;
    let quote = zero_lanes(x ^ (ONES * u64::from(b'"')));
    let backslash = zero_lanes(x ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) & HIGHS != 0
}
