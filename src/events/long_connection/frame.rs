//! Feishu's `pbbp2.Frame` (proto2, feishu-platform.md §5.4), its prost
//! structs written by hand (no build script, no protoc), and the frames the
//! client makes: pings and acks.
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
//! Decoding is prost's (a bad message is an `Err`, never a panic); what the
//! headers mean (`sum`, `seq`) is checked by [`super::reassembly`].

use base64::Engine as _;
use bytes::Bytes;

/// `method` of a control frame (ping, pong).
pub const CONTROL: i32 = 0;
/// `method` of a data frame (event, card).
pub const DATA: i32 = 1;

/// One `key: value` header.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Header {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

/// One binary WebSocket message of the long connection.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Frame {
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    /// The `service_id` of the connection's URL.
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    /// [`CONTROL`] or [`DATA`].
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<Header>,
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    #[prost(bytes = "bytes", optional, tag = "8")]
    pub payload: Option<Bytes>,
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

impl Frame {
    /// The value of header `key`, if present.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_str())
    }

    /// Adds a header.
    pub fn push_header(&mut self, key: &str, value: impl Into<String>) {
        self.headers.push(Header {
            key: key.to_owned(),
            value: value.into(),
        });
    }

    /// Decodes one binary message.
    pub fn decode_bytes(bytes: Bytes) -> Result<Frame, prost::DecodeError> {
        <Frame as prost::Message>::decode(bytes)
    }

    /// Encodes the frame.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(prost::Message::encode_to_vec(self))
    }
}

/// The client's ping: `type=ping`, SeqID and LogID 0, on `service`.
pub fn ping(service: i32) -> Frame {
    let mut f = Frame {
        service,
        method: CONTROL,
        ..Frame::default()
    };
    f.push_header("type", "ping");
    f
}

/// The ack of an event: the frame that completed it, with `biz_rt` (the
/// handler's time in ms) added and the payload replaced by
/// `{"code":200}`, `{"code":200,"data":"<base64 of answer>"}` or
/// `{"code":500}`, as the official SDKs answer.
pub fn ack(mut frame: Frame, biz_rt_ms: u64, answer: Result<Option<&[u8]>, ()>) -> Frame {
    frame.headers.retain(|h| h.key != "biz_rt");
    frame.push_header("biz_rt", biz_rt_ms.to_string());
    let body = match answer {
        Ok(None) => serde_json::json!({"code": 200}),
        Ok(Some(data)) => serde_json::json!({
            "code": 200,
            "data": base64::engine::general_purpose::STANDARD.encode(data),
        }),
        Err(()) => serde_json::json!({"code": 500}),
    };
    frame.payload = Some(Bytes::from(body.to_string()));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ping for service_id 123 as the Python SDK serialises it
    /// (feishu-platform.md §5.4).
    #[test]
    fn ping_bytes_match_the_python_sdk() {
        let expected: &[u8] = &[
            0x08, 0x00, 0x10, 0x00, 0x18, 0x7b, 0x20, 0x00, 0x2a, 0x0c, 0x0a, 0x04, 0x74, 0x79,
            0x70, 0x65, 0x12, 0x04, 0x70, 0x69, 0x6e, 0x67,
        ];
        assert_eq!(ping(123).to_bytes().as_ref(), expected);
        let back = Frame::decode_bytes(Bytes::from_static(expected)).expect("decodes");
        assert_eq!(back, ping(123));
    }

    #[test]
    fn an_ack_is_the_same_frame_with_biz_rt_and_the_answer() {
        let mut event = Frame {
            seq_id: 7,
            log_id: 9,
            service: 3,
            method: DATA,
            payload: Some(Bytes::from_static(b"{\"schema\":\"2.0\"}")),
            ..Frame::default()
        };
        event.push_header("type", "event");
        event.push_header("message_id", "m1");
        let a = ack(event.clone(), 12, Ok(Some(br#"{"toast":{}}"#)));
        assert_eq!((a.seq_id, a.log_id, a.service, a.method), (7, 9, 3, DATA));
        assert_eq!(a.header("message_id"), Some("m1"));
        assert_eq!(a.header("biz_rt"), Some("12"));
        let body: serde_json::Value =
            serde_json::from_slice(a.payload.as_deref().unwrap()).unwrap();
        assert_eq!(body["code"], 200);
        assert_eq!(body["data"], "eyJ0b2FzdCI6e319");
        let failed = ack(event, 1, Err(()));
        assert_eq!(failed.payload.as_deref(), Some(&br#"{"code":500}"#[..]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b"\xff\xff\xff\xff"[..],
            b"\x2a\xff\xff\xff\xff\x0f",
            b"hello world",
            b"\x08",
        ] {
            assert!(Frame::decode_bytes(Bytes::copy_from_slice(junk)).is_err());
        }
    }
}
