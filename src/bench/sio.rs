//! Socket.IO v5 over Engine.IO v4 framing: the few text packets a bench client needs.
//!
//! Why hand-written rather than a Socket.IO client crate: `rust_socketio` pulls in native-tls
//! (OpenSSL) and runs several tasks and channels per client, which does not fit 20,000 clients
//! in one process on two cores. The vendored `socketioxide-parser-common` packet types are
//! server-side (they own their payloads as `serde_json::Value` trees and decode the client's
//! direction of the handshake), so they would cost an allocation-heavy round trip per frame.
//! A bench client only ever sees a handful of shapes over the websocket transport, all text:
//!
//! ```text
//! Engine.IO:  0{open json}  1 (close)  2 (ping)  3 (pong)  4<socket.io packet>  6 (noop)
//! Socket.IO:  0[/nsp,]{data}         CONNECT (server: {"sid"}; client: auth object)
//!             1[/nsp,]               DISCONNECT
//!             2[/nsp,][id][...]      EVENT, optional ack id
//!             3[/nsp,]id[...]        ACK
//!             4[/nsp,]{data}         CONNECT_ERROR
//! ```
//!
//! So the whole protocol is one parser ([`parse`]) that borrows from the frame, and three
//! encoders. Binary packets (types 5 and 6) are refused: CoolChat never sends them. Nothing
//! here panics on any input; the tests feed it every prefix of real frames.

use serde::Deserialize;
use serde::Serialize;
use std::borrow::Cow;

/// A frame that does not follow the framing above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad Socket.IO frame: {0}")]
pub struct FrameError(pub &'static str);

/// One Engine.IO packet, borrowing from the frame text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EioPacket<'a> {
    /// `0{...}`: the handshake (sid, pingInterval, pingTimeout, maxPayload).
    Open(&'a str),
    Close,
    /// `2[probe]`: must be answered with [`PONG`].
    Ping(&'a str),
    Pong(&'a str),
    Message(SioPacket<'a>),
    Upgrade,
    Noop,
}

/// One Socket.IO packet. `nsp` is `/` when the frame names no namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SioPacket<'a> {
    Connect {
        nsp: &'a str,
        data: &'a str,
    },
    Disconnect {
        nsp: &'a str,
    },
    Event {
        nsp: &'a str,
        ack: Option<u64>,
        payload: &'a str,
    },
    Ack {
        nsp: &'a str,
        id: u64,
        payload: &'a str,
    },
    ConnectError {
        nsp: &'a str,
        data: &'a str,
    },
}

/// The answer to an Engine.IO ping.
pub const PONG: &str = "3";

/// Parses one websocket text frame.
pub fn parse(frame: &str) -> Result<EioPacket<'_>, FrameError> {
    let mut chars = frame.char_indices();
    let Some((_, kind)) = chars.next() else {
        return Err(FrameError("empty frame"));
    };
    let rest = &frame[kind.len_utf8()..];
    Ok(match kind {
        '0' => EioPacket::Open(rest),
        '1' => EioPacket::Close,
        '2' => EioPacket::Ping(rest),
        '3' => EioPacket::Pong(rest),
        '4' => EioPacket::Message(parse_sio(rest)?),
        '5' => EioPacket::Upgrade,
        '6' => EioPacket::Noop,
        _ => return Err(FrameError("unknown Engine.IO packet type")),
    })
}

fn parse_sio(s: &str) -> Result<SioPacket<'_>, FrameError> {
    let Some(kind) = s.as_bytes().first().copied() else {
        return Err(FrameError("empty Socket.IO packet"));
    };
    let mut rest = &s[1..];
    if matches!(kind, b'5' | b'6') {
        return Err(FrameError("binary Socket.IO packets are not supported"));
    }
    // Namespace: `/name,` (only when not the main namespace).
    let mut nsp = "/";
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(comma) => {
                nsp = &rest[..comma];
                rest = &rest[comma + 1..];
            }
            None => {
                // `1/admin` (a disconnect with no payload) has no comma.
                nsp = rest;
                rest = "";
            }
        }
    }
    // Ack id: leading ASCII digits.
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        Some(
            rest[..digits]
                .parse::<u64>()
                .map_err(|_| FrameError("ack id out of range"))?,
        )
    } else {
        None
    };
    let payload = &rest[digits..];
    Ok(match kind {
        b'0' => SioPacket::Connect { nsp, data: payload },
        b'1' => SioPacket::Disconnect { nsp },
        b'2' => {
            if !payload.starts_with('[') {
                return Err(FrameError("an event payload must be a JSON array"));
            }
            SioPacket::Event { nsp, ack: id, payload }
        }
        b'3' => {
            let id = id.ok_or(FrameError("an ack needs an id"))?;
            if !payload.starts_with('[') {
                return Err(FrameError("an ack payload must be a JSON array"));
            }
            SioPacket::Ack { nsp, id, payload }
        }
        b'4' => SioPacket::ConnectError { nsp, data: payload },
        _ => return Err(FrameError("unknown Socket.IO packet type")),
    })
}

/// `40{auth}`: connect to the main namespace with an auth object.
pub fn encode_connect<T: Serialize>(auth: &T) -> Result<String, serde_json::Error> {
    Ok(format!("40{}", serde_json::to_string(auth)?))
}

/// `42[id]["name",data]`: an event, with an ack id when the sender wants an answer.
pub fn encode_event<T: Serialize>(ack: Option<u64>, name: &str, data: &T) -> Result<String, serde_json::Error> {
    let body = serde_json::to_string(&(name, data))?;
    Ok(match ack {
        Some(id) => format!("42{id}{body}"),
        None => format!("42{body}"),
    })
}

/// The name of an event from its payload (`["name", ...]`), without parsing the arguments.
/// Names without escapes (all of CoolChat's) are borrowed; others are decoded.
pub fn event_name(payload: &str) -> Option<Cow<'_, str>> {
    let rest = payload.strip_prefix('[')?.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    let candidate = &rest[..end];
    if !candidate.contains('\\') {
        return Some(Cow::Borrowed(candidate));
    }
    // Rare: an escaped name. Decode the first element properly.
    #[derive(Deserialize)]
    struct First(String, serde::de::IgnoredAny);
    #[derive(Deserialize)]
    struct Only((String,));
    serde_json::from_str::<First>(payload)
        .map(|f| Cow::Owned(f.0))
        .or_else(|_| serde_json::from_str::<Only>(payload).map(|o| Cow::Owned(o.0.0)))
        .ok()
}

/// The first argument of an event (`["name", arg, ...]`), decoded into `T`.
pub fn event_arg<'a, T: Deserialize<'a>>(payload: &'a str) -> Result<T, serde_json::Error> {
    #[derive(Deserialize)]
    struct Two<A>(serde::de::IgnoredAny, A);
    serde_json::from_str::<Two<T>>(payload).map(|t| t.1)
}

/// The first argument of an ack (`[arg, ...]`), decoded into `T`.
pub fn ack_arg<'a, T: Deserialize<'a>>(payload: &'a str) -> Result<T, serde_json::Error> {
    #[derive(Deserialize)]
    struct OneOrMore<A>(A, serde::de::IgnoredAny);
    serde_json::from_str::<(T,)>(payload)
        .map(|t| t.0)
        .or_else(|_| serde_json::from_str::<OneOrMore<T>>(payload).map(|t| t.0))
}

/// The error code of a `connect_error` packet: `{"message", "data": {"error": {"code"}}}` as
/// CoolChat sends it; `connect_error` when the data carries no code.
pub fn connect_error_code(data: &str) -> String {
    #[derive(Deserialize)]
    struct Outer {
        data: Option<Envelope>,
    }
    #[derive(Deserialize)]
    struct Envelope {
        error: Option<Code>,
    }
    #[derive(Deserialize)]
    struct Code {
        code: String,
    }
    serde_json::from_str::<Outer>(data)
        .ok()
        .and_then(|o| o.data)
        .and_then(|d| d.error)
        .map(|c| c.code)
        .unwrap_or_else(|| "connect_error".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_io_packets() {
        assert_eq!(parse("0{\"sid\":\"x\"}"), Ok(EioPacket::Open("{\"sid\":\"x\"}")));
        assert_eq!(parse("1"), Ok(EioPacket::Close));
        assert_eq!(parse("2"), Ok(EioPacket::Ping("")));
        assert_eq!(parse("2probe"), Ok(EioPacket::Ping("probe")));
        assert_eq!(parse("3"), Ok(EioPacket::Pong("")));
        assert_eq!(parse("5"), Ok(EioPacket::Upgrade));
        assert_eq!(parse("6"), Ok(EioPacket::Noop));
        assert!(parse("").is_err());
        assert!(parse("7").is_err());
        assert!(parse("x").is_err());
        assert!(parse("é").is_err());
    }

    #[test]
    fn socket_io_connect_and_errors() {
        assert_eq!(
            parse("40{\"sid\":\"abc\"}"),
            Ok(EioPacket::Message(SioPacket::Connect {
                nsp: "/",
                data: "{\"sid\":\"abc\"}"
            }))
        );
        assert_eq!(
            parse("40"),
            Ok(EioPacket::Message(SioPacket::Connect { nsp: "/", data: "" }))
        );
        assert_eq!(
            parse("40/admin,{\"sid\":\"abc\"}"),
            Ok(EioPacket::Message(SioPacket::Connect {
                nsp: "/admin",
                data: "{\"sid\":\"abc\"}"
            }))
        );
        assert_eq!(parse("41"), Ok(EioPacket::Message(SioPacket::Disconnect { nsp: "/" })));
        assert_eq!(
            parse("41/admin,"),
            Ok(EioPacket::Message(SioPacket::Disconnect { nsp: "/admin" }))
        );
        assert_eq!(
            parse("41/admin"),
            Ok(EioPacket::Message(SioPacket::Disconnect { nsp: "/admin" }))
        );
        let err =
            r#"44{"message":"invalid token","data":{"error":{"code":"invalid_token","message":"invalid token"}}}"#;
        let Ok(EioPacket::Message(SioPacket::ConnectError { nsp: "/", data })) = parse(err) else {
            panic!("not a connect error: {:?}", parse(err));
        };
        assert_eq!(connect_error_code(data), "invalid_token");
        assert_eq!(connect_error_code(r#"{"message":"nope"}"#), "connect_error");
        assert_eq!(connect_error_code("garbage"), "connect_error");
        assert!(parse("4").is_err());
        assert!(parse("45").is_err());
        assert!(parse("46").is_err());
        assert!(parse("49").is_err());
    }

    #[test]
    fn events_and_acks() {
        let frame = r#"42["message",{"room_id":"r1","seq":3,"body":"hi"}]"#;
        let Ok(EioPacket::Message(SioPacket::Event {
            nsp: "/",
            ack: None,
            payload,
        })) = parse(frame)
        else {
            panic!("not an event");
        };
        assert_eq!(event_name(payload).as_deref(), Some("message"));
        #[derive(Deserialize, Debug, PartialEq)]
        struct M {
            room_id: String,
            seq: i64,
        }
        assert_eq!(
            event_arg::<M>(payload).ok(),
            Some(M {
                room_id: "r1".into(),
                seq: 3
            })
        );

        let frame = r#"4217["ping",{}]"#;
        assert_eq!(
            parse(frame),
            Ok(EioPacket::Message(SioPacket::Event {
                nsp: "/",
                ack: Some(17),
                payload: r#"["ping",{}]"#
            }))
        );
        let frame = r#"4312[{"ok":true,"message":{"seq":9}}]"#;
        let Ok(EioPacket::Message(SioPacket::Ack {
            nsp: "/",
            id: 12,
            payload,
        })) = parse(frame)
        else {
            panic!("not an ack");
        };
        #[derive(Deserialize)]
        struct A {
            ok: bool,
        }
        assert!(ack_arg::<A>(payload).map(|a| a.ok).unwrap_or(false));
        assert!(ack_arg::<A>(r#"[{"ok":false},"extra"]"#).is_ok_and(|a| !a.ok));
        assert!(ack_arg::<A>("[]").is_err());
        // An ack without an id, or payloads that are not arrays.
        assert!(parse("43[{}]").is_err());
        assert!(parse("431{}").is_err());
        assert!(parse("42{}").is_err());
        assert!(parse("4299999999999999999999[1]").is_err());
        // Namespaced ack.
        assert_eq!(
            parse("43/chat,5[1]"),
            Ok(EioPacket::Message(SioPacket::Ack {
                nsp: "/chat",
                id: 5,
                payload: "[1]"
            }))
        );
    }

    #[test]
    fn event_names() {
        assert_eq!(
            event_name(r#"["session:end",{"code":"shutdown"}]"#).as_deref(),
            Some("session:end")
        );
        assert_eq!(event_name(r#"[ "presence" , {}]"#).as_deref(), Some("presence"));
        assert_eq!(event_name(r#"["only"]"#).as_deref(), Some("only"));
        assert_eq!(event_name(r#"["a\"b",1]"#).as_deref(), Some("a\"b"));
        assert_eq!(event_name(r#"["a\u0041",1]"#).as_deref(), Some("aA"));
        assert_eq!(event_name("[1,2]"), None);
        assert_eq!(event_name("[\"unterminated"), None);
        assert_eq!(event_name(""), None);
    }

    #[test]
    fn encoders_round_trip() {
        let c = encode_connect(&json!({"token": "t\"ok"})).unwrap_or_default();
        assert_eq!(c, r#"40{"token":"t\"ok"}"#);
        assert_eq!(
            parse(&c),
            Ok(EioPacket::Message(SioPacket::Connect {
                nsp: "/",
                data: r#"{"token":"t\"ok"}"#
            }))
        );

        let e =
            encode_event(Some(7), "message:send", &json!({"room_id": "r", "body": "{\"q\":1}"})).unwrap_or_default();
        assert_eq!(e, r#"427["message:send",{"body":"{\"q\":1}","room_id":"r"}]"#);
        let Ok(EioPacket::Message(SioPacket::Event {
            ack: Some(7), payload, ..
        })) = parse(&e)
        else {
            panic!("round trip");
        };
        assert_eq!(event_name(payload).as_deref(), Some("message:send"));
        let arg: serde_json::Value = event_arg(payload).unwrap_or_default();
        assert_eq!(arg["body"], "{\"q\":1}");

        let e = encode_event(None, "sync", &json!({})).unwrap_or_default();
        assert_eq!(e, r#"42["sync",{}]"#);
    }

    #[test]
    fn no_prefix_panics() {
        let frames = [
            r#"0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":81920}"#,
            r#"44/x,{"message":"m","data":{"error":{"code":"banned"}}}"#,
            r#"4212["message",{"room_id":"é","seq":1}]"#,
            r#"43/n,99[{"ok":true}]"#,
        ];
        for f in frames {
            for (i, _) in f.char_indices() {
                let _ = parse(&f[..i]);
                let _ = parse(&f[i..]);
                if let Ok(EioPacket::Message(SioPacket::Event { payload, .. })) = parse(&f[..i]) {
                    let _ = event_name(payload);
                }
            }
        }
    }
}
