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
    if find(s.as_bytes(), 0, debug_special, debug_special_byte).is_none() {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        push_debug_str_escaped(line, s);
    }
}

/// A byte `{:?}` may escape: `"`, `\` and all but printable ASCII (what
/// becomes of non-ASCII is left to `{:?}`).
fn debug_special_byte(b: u8) -> bool {
    !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\'
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

/// What JSON escapes: control characters, `"` and `\`.
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
/// `word_special` flags exactly the words that hold such a byte (the tests
/// below check every byte in every lane); `special` then finds it.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A word test, the byte test it stands for, and a name.
    type Scan = (fn(u64) -> bool, fn(u8) -> bool, &'static str);

    /// The two scans.
    const SCANS: [Scan; 2] = [
        (debug_special, debug_special_byte, "debug"),
        (json_special, json_special_byte, "json"),
    ];

    /// The bytes neither format escapes.
    fn clean() -> impl Iterator<Item = u8> {
        (0..=255).filter(|&b| !debug_special_byte(b) && !json_special_byte(b))
    }

    #[test]
    fn a_word_is_flagged_when_a_lane_is_special() {
        for (word_special, special, scan) in SCANS {
            // Every byte in every lane, among every clean byte.
            for filler in clean() {
                for b in 0..=255u8 {
                    for lane in 0..8 {
                        let mut word = [filler; 8];
                        word[lane] = b;
                        assert_eq!(
                            word_special(word_at(&word)),
                            special(b),
                            "{scan}: {b:#04x} in lane {lane} among {filler:#04x}"
                        );
                    }
                }
            }
            // Every two bytes in every two lanes: a borrow or carry out of
            // one lane must not hide (or fake) the other.
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    for i in 0..8 {
                        for j in i + 1..8 {
                            let mut word = [b'a'; 8];
                            word[i] = a;
                            word[j] = b;
                            assert_eq!(
                                word_special(word_at(&word)),
                                special(a) || special(b),
                                "{scan}: {a:#04x} in lane {i}, {b:#04x} in lane {j}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn find_finds_what_the_byte_test_finds() {
        // Every byte at every offset of every string of up to 24 bytes
        // (three words: every lane, and every tail after whole words),
        // scanned from every start, before and after the byte.
        for (word_special, special, scan) in SCANS {
            for len in 0..24 {
                let clean = vec![b'a'; len];
                for from in 0..=len {
                    assert_eq!(find(&clean, from, word_special, special), None);
                }
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut bytes = clean.clone();
                        bytes[at] = b;
                        for from in 0..=len {
                            let want = bytes[from..]
                                .iter()
                                .position(|&b| special(b))
                                .map(|p| from + p);
                            assert_eq!(
                                find(&bytes, from, word_special, special),
                                want,
                                "{scan}: {b:#04x} at {at} of {len}, from {from}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn zero_lanes_flags_a_zero_lane_and_no_word_without_one() {
        for filler in 1..=255u8 {
            assert_eq!(
                zero_lanes(word_at(&[filler; 8])) & HIGHS,
                0,
                "{filler:#04x}"
            );
            for lane in 0..8 {
                let mut word = [filler; 8];
                word[lane] = 0;
                let mut high = [0; 8];
                high[lane] = 0x80;
                let flagged = zero_lanes(word_at(&word)) & word_at(&high);
                assert_ne!(flagged, 0, "{filler:#04x}, zero in lane {lane}");
            }
        }
    }
}
