//! The long connection's frame: Feishu's `pbbp2.Frame` (proto2), as the
//! official SDKs define it (`lark_oapi/ws/pb/pbbp2.proto`), with prost's
//! derive written by hand: no build script, no protoc.
//!
//! ```proto
//! message Header { required string key = 1; required string value = 2; }
//! message Frame {
//!   required uint64 SeqID = 1;  required uint64 LogID = 2;
//!   required int32 service = 3; required int32 method = 4;
//!   repeated Header headers = 5;
//!   optional string payload_encoding = 6; optional string payload_type = 7;
//!   optional bytes payload = 8;           optional string LogIDNew = 9;
//! }
//! ```
//!
//! The fake keeps its own copy rather than sharing the gateway's: it is the
//! independent judge of what the gateway sends.

/// `method` of a control frame (ping, pong).
pub(crate) const CONTROL: i32 = 0;
/// `method` of a data frame (event, card).
pub(crate) const DATA: i32 = 1;

/// One `key: value` header of a frame.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct Header {
    #[prost(string, required, tag = "1")]
    pub(crate) key: String,
    #[prost(string, required, tag = "2")]
    pub(crate) value: String,
}

/// One binary WebSocket message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct Frame {
    #[prost(uint64, required, tag = "1")]
    pub(crate) seq_id: u64,
    #[prost(uint64, required, tag = "2")]
    pub(crate) log_id: u64,
    /// The `service_id` of the connection's URL.
    #[prost(int32, required, tag = "3")]
    pub(crate) service: i32,
    /// [`CONTROL`] or [`DATA`].
    #[prost(int32, required, tag = "4")]
    pub(crate) method: i32,
    #[prost(message, repeated, tag = "5")]
    pub(crate) headers: Vec<Header>,
    #[prost(string, optional, tag = "6")]
    pub(crate) payload_encoding: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub(crate) payload_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub(crate) payload: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub(crate) log_id_new: Option<String>,
}

impl Frame {
    /// The value of header `key`, if present.
    pub(crate) fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_str())
    }

    /// Adds a header.
    pub(crate) fn push_header(&mut self, key: &str, value: impl Into<String>) {
        self.headers.push(Header {
            key: key.to_owned(),
            value: value.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The ping frame for service_id 123, as the Python SDK serialises it
    /// (feishu-platform.md §5.4).
    #[test]
    fn ping_bytes_match_the_python_sdk() {
        let mut ping = Frame {
            service: 123,
            method: CONTROL,
            ..Frame::default()
        };
        ping.push_header("type", "ping");
        let expected: &[u8] = &[
            0x08, 0x00, 0x10, 0x00, 0x18, 0x7b, 0x20, 0x00, 0x2a, 0x0c, 0x0a, 0x04, 0x74, 0x79,
            0x70, 0x65, 0x12, 0x04, 0x70, 0x69, 0x6e, 0x67,
        ];
        assert_eq!(ping.encode_to_vec(), expected);
        let back = Frame::decode(expected).expect("decodes");
        assert_eq!(back, ping);
        assert_eq!(back.header("type"), Some("ping"));
    }
}
