//! Sign-In with Ethereum (EIP-4361): the pure check of a signed message against what this node
//! expects. No I/O, no clock, no storage: the caller passes `now` and the expectations, and gets
//! back who signed and with which nonce.
//!
//! What lives here: [`verify`] (the whole check), [`parse_signature`] (the `0x` + 130 hex shape of
//! a personal-sign signature), [`check_nonce`] (a convenience comparison), and the
//! [`SiweExpectations`] / [`VerifiedSiwe`] types.
//!
//! What the `siwe` crate (0.6.1) checks for us:
//! * the EIP-4361 grammar: preamble, EIP-55 checksummed address, field order, `Version: 1`,
//!   RFC 3986 authority and URIs, RFC 3339 timestamps, a decimal chain id, a nonce of at least
//!   8 characters, no trailing content;
//! * the EIP-191 (`personal_sign`) signature: it re-serializes the parsed message, hashes it,
//!   recovers the public key (recovery byte taken as `v % 27`, so both `v = 0/1` and `v = 27/28`
//!   work; `k256` refuses high-S signatures) and compares the derived address with the
//!   message's.
//!
//! What we add, in this order (the order decides which error a client sees):
//! 1. a size limit, before any parsing ([`Error::PayloadTooLarge`]);
//! 2. parsing ([`Error::SiweMalformed`]), plus two checks the crate leaves out: the nonce must be
//!    ASCII alphanumeric (the EIP-4361 grammar), and the message must be in canonical form, i.e.
//!    re-serialize to exactly the text received. The crate verifies the signature over its own
//!    re-serialization, so without this check the text we were shown (e.g. `Chain ID: 01`, or a
//!    stray line after the statement, which the crate skips without looking) could differ from
//!    the text that was signed;
//! 3. the signature's shape (a malformed signature is a bad signature: `siwe_invalid_signature`,
//!    401, as the v1 contract lists bad signatures among the 401 refusals);
//! 4. the domain: equal to ours, ASCII case-insensitively ([`SiweRefusal::Domain`]);
//! 5. the URI: same scheme and authority as our origin, case-insensitively; any path, query or
//!    fragment may follow. No default-port folding: `https://host:443` is not `https://host`
//!    ([`SiweRefusal::Uri`]);
//! 6. the chain id: one of the allowed ones ([`SiweRefusal::Chain`]);
//! 7. time: `Expiration Time <= now` is [`SiweRefusal::Expired`], `Not Before > now` is
//!    [`SiweRefusal::NotYetValid`], and, when a skew is configured, `|now - Issued At| > skew` is
//!    [`SiweRefusal::IssuedAt`] (see [`SiweExpectations::issued_at_skew`]);
//! 8. last, the signature itself ([`SiweRefusal::Signature`]), the only costly step.
//!
//! What is NOT done here: the nonce. [`verify`] returns the message's nonce; checking that this
//! node issued it, that it is still fresh, and consuming it so it can never be used twice is the
//! caller's job (the chat service does it through its ephemeral-state backend, after [`verify`]
//! succeeded, so a bad attempt does not burn a good client's nonce). Without that step a signed
//! message could be replayed until it expires.
//!
//! Nothing here panics on any input.

use crate::address::Address;
use crate::error::{Error, SiweRefusal};
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;

/// What this node requires of a SIWE message.
#[derive(Debug, Clone, Copy)]
pub struct SiweExpectations<'a> {
    /// `host[:port]` the message's first line must name, compared ASCII case-insensitively.
    /// No default-port folding and no user info allowed.
    pub domain: &'a str,
    /// Our origin, e.g. `http://127.0.0.1:8080`. The message's `URI:` must have the same scheme
    /// and authority (case-insensitively); it may carry a path, query or fragment. Only the scheme
    /// and authority of this value are used. A value that is not an absolute URI with an
    /// authority is a configuration bug and makes [`verify`] return [`Error::Internal`].
    pub uri_origin: &'a str,
    /// Accepted `Chain ID:` values. Empty refuses every message.
    pub allowed_chain_ids: &'a [u64],
    /// Largest accepted distance between `Issued At` and `now`, in either direction: a message
    /// issued further in the future is a clock problem (or a pre-signed message), one issued
    /// further in the past is stale. The nonce TTL is expected to be at most this, so the past
    /// bound never refuses a message whose nonce is still live. `None` skips the check.
    pub issued_at_skew: Option<Duration>,
    /// Largest accepted message, in bytes; checked before parsing.
    pub max_message_bytes: usize,
}

/// A message that passed every check of [`verify`]. The nonce has NOT been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSiwe {
    /// The signer, recovered from the signature (equal to the message's address).
    pub address: Address,
    /// The message's nonce, for the caller to check and consume.
    pub nonce: String,
    /// The message's `Expiration Time`, if any.
    pub expiration: Option<OffsetDateTime>,
    /// The message's `Chain ID`.
    pub chain_id: u64,
}

const SIGNATURE_SHAPE: &str = "signature must be 0x followed by 130 hex digits";

/// Parses a 65-byte `personal_sign` signature written `0x` + 130 hex digits (either case).
/// The `0x` prefix is required.
pub fn parse_signature(sig: &str) -> Result<[u8; 65], Error> {
    let hex_part = sig
        .strip_prefix("0x")
        .filter(|h| h.len() == 130)
        .ok_or(Error::SiweSignatureShape(SIGNATURE_SHAPE))?;
    let mut bytes = [0u8; 65];
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| Error::SiweSignatureShape(SIGNATURE_SHAPE))?;
    Ok(bytes)
}

/// Checks a signed SIWE message against `expect` at time `now`. See the module documentation for
/// what is checked and in which order. The nonce is returned unchecked: the caller must verify
/// that it issued it and consume it (see [`check_nonce`] for a plain comparison).
pub fn verify(
    message: &str,
    signature: &str,
    expect: &SiweExpectations<'_>,
    now: OffsetDateTime,
) -> Result<VerifiedSiwe, Error> {
    // 1. Size, before spending anything on parsing.
    if message.len() > expect.max_message_bytes {
        return Err(Error::PayloadTooLarge {
            what: "SIWE message",
            limit: expect.max_message_bytes,
        });
    }

    // 2. Grammar.
    let parsed = siwe::Message::from_str(message).map_err(|e| Error::SiweMalformed(e.to_string()))?;
    if !parsed.nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::SiweMalformed(
            "the nonce must be ASCII letters and digits".into(),
        ));
    }
    if parsed.to_string() != message {
        return Err(Error::SiweMalformed(
            "the message is not in canonical EIP-4361 form (it does not re-serialize to the same text)".into(),
        ));
    }

    // 3. Signature shape.
    let sig = parse_signature(signature)?;

    // 4. Domain.
    if !parsed.domain.as_str().eq_ignore_ascii_case(expect.domain) {
        return Err(Error::Siwe(SiweRefusal::Domain));
    }

    // 5. URI: scheme and authority of our origin.
    let origin = http::Uri::from_str(expect.uri_origin).map_err(|_| origin_bug(expect.uri_origin))?;
    let (Some(origin_scheme), Some(origin_authority)) = (origin.scheme_str(), origin.authority()) else {
        return Err(origin_bug(expect.uri_origin));
    };
    let uri_ok = parsed.uri.scheme_str().eq_ignore_ascii_case(origin_scheme)
        && parsed
            .uri
            .authority_str()
            .is_some_and(|a| a.eq_ignore_ascii_case(origin_authority.as_str()));
    if !uri_ok {
        return Err(Error::Siwe(SiweRefusal::Uri));
    }

    // 6. Chain.
    if !expect.allowed_chain_ids.contains(&parsed.chain_id) {
        return Err(Error::Siwe(SiweRefusal::Chain));
    }

    // 7. Time.
    let expiration = parsed.expiration_time.as_ref().map(|t| *t.as_ref());
    if expiration.is_some_and(|exp| exp <= now) {
        return Err(Error::Siwe(SiweRefusal::Expired));
    }
    if parsed.not_before.as_ref().is_some_and(|nbf| *nbf.as_ref() > now) {
        return Err(Error::Siwe(SiweRefusal::NotYetValid));
    }
    if let Some(skew) = expect.issued_at_skew {
        // Subtracting two valid OffsetDateTimes cannot overflow, and unsigned_abs cannot panic.
        let distance = (now - *parsed.issued_at.as_ref()).unsigned_abs();
        if distance > skew {
            return Err(Error::Siwe(SiweRefusal::IssuedAt));
        }
    }

    // 8. Signature.
    match parsed.verify_eip191(&sig) {
        Ok(_) => {}
        // Display of a parsed message cannot fail; if it ever did, it is our bug, not the client's.
        Err(siwe::VerificationError::Serialization(e)) => return Err(Error::internal(e)),
        Err(_) => return Err(Error::Siwe(SiweRefusal::Signature)),
    }

    Ok(VerifiedSiwe {
        address: Address::from_bytes(parsed.address),
        nonce: parsed.nonce,
        expiration,
        chain_id: parsed.chain_id,
    })
}

/// Plain comparison of a verified message's nonce with the one the caller expected:
/// `Err(Siwe(Nonce))` when they differ. Consuming the nonce (single use, TTL) stays the caller's.
pub fn check_nonce(verified: &VerifiedSiwe, expected: &str) -> Result<(), Error> {
    if verified.nonce == expected {
        Ok(())
    } else {
        Err(Error::Siwe(SiweRefusal::Nonce))
    }
}

fn origin_bug(origin: &str) -> Error {
    Error::internal(format!(
        "SIWE uri_origin `{origin}` is not an absolute URI with an authority"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;
    use sha3::{Digest, Keccak256};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2030-06-01 12:00:00 UTC);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).expect("a valid test key")
    }

    fn address_of(key: &SigningKey) -> Address {
        let point = key.verifying_key().to_encoded_point(false);
        let hash = Keccak256::digest(&point.as_bytes()[1..]);
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&hash[12..]);
        Address::from_bytes(bytes)
    }

    /// Signs `text` as `personal_sign` would, returning `0x` + r + s + v (v = 27/28).
    fn sign(key: &SigningKey, text: &str) -> String {
        let message: siwe::Message = text.parse().expect("test message parses");
        let prehash = message.eip191_hash().expect("hashable");
        let (sig, recid) = key.sign_prehash_recoverable(&prehash).expect("signs");
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(recid.to_byte() + 27);
        format!("0x{}", hex::encode(bytes))
    }

    struct Msg<'a> {
        domain: &'a str,
        address: Address,
        uri: &'a str,
        chain_id: &'a str,
        nonce: &'a str,
        issued_at: &'a str,
        expiration: Option<&'a str>,
        not_before: Option<&'a str>,
    }

    impl<'a> Msg<'a> {
        fn new(address: Address) -> Self {
            Msg {
                domain: "127.0.0.1:8080",
                address,
                uri: "http://127.0.0.1:8080",
                chain_id: "1",
                nonce: "abcdEFGH12345678",
                issued_at: "2030-06-01T11:59:00Z",
                expiration: Some("2030-06-01T12:30:00Z"),
                not_before: None,
            }
        }

        fn text(&self) -> String {
            let mut s = format!(
                "{} wants you to sign in with your Ethereum account:\n{}\n\nSign in to CoolChat\n\nURI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}",
                self.domain, self.address, self.uri, self.chain_id, self.nonce, self.issued_at
            );
            if let Some(e) = self.expiration {
                s.push_str(&format!("\nExpiration Time: {e}"));
            }
            if let Some(n) = self.not_before {
                s.push_str(&format!("\nNot Before: {n}"));
            }
            s
        }
    }

    fn expect() -> SiweExpectations<'static> {
        SiweExpectations {
            domain: "127.0.0.1:8080",
            uri_origin: "http://127.0.0.1:8080",
            allowed_chain_ids: &[1, 10],
            issued_at_skew: Some(Duration::from_secs(300)),
            max_message_bytes: 4096,
        }
    }

    /// A well-shaped signature that matches nothing.
    fn dummy_sig() -> String {
        format!("0x{}", "11".repeat(65))
    }

    fn code(r: Result<VerifiedSiwe, Error>) -> &'static str {
        match r {
            Ok(v) => panic!("expected a refusal, got {v:?}"),
            Err(e) => e.code(),
        }
    }

    #[test]
    fn a_real_signature_verifies() {
        let k = key(7);
        let m = Msg::new(address_of(&k));
        let text = m.text();
        let v = verify(&text, &sign(&k, &text), &expect(), NOW).expect("verifies");
        assert_eq!(v.address, address_of(&k));
        assert_eq!(v.nonce, "abcdEFGH12345678");
        assert_eq!(v.chain_id, 1);
        assert_eq!(v.expiration, Some(datetime!(2030-06-01 12:30:00 UTC)));
        check_nonce(&v, "abcdEFGH12345678").expect("same nonce");
        assert_eq!(
            check_nonce(&v, "abcdEFGH12345679").expect_err("other nonce").code(),
            "siwe_invalid_nonce"
        );
    }

    #[test]
    fn recovery_byte_zero_or_one_also_works() {
        let k = key(8);
        let text = Msg::new(address_of(&k)).text();
        let sig = sign(&k, &text);
        let mut bytes = parse_signature(&sig).expect("shape");
        bytes[64] -= 27;
        let low_v = format!("0x{}", hex::encode(bytes));
        let v = verify(&text, &low_v, &expect(), NOW).expect("v = 0/1 verifies");
        assert_eq!(v.address, address_of(&k));
        // Upper-case hex is accepted too.
        let upper = format!("0x{}", sig[2..].to_ascii_uppercase());
        verify(&text, &upper, &expect(), NOW).expect("upper-case hex verifies");
    }

    #[test]
    fn a_valid_signature_over_another_message_is_refused() {
        let k = key(9);
        let m = Msg::new(address_of(&k));
        let signed = m.text();
        let sig = sign(&k, &signed);
        let other = Msg {
            nonce: "zzzzzzzz99999999",
            ..m
        }
        .text();
        assert_eq!(code(verify(&other, &sig, &expect(), NOW)), "siwe_invalid_signature");
        // Signed by someone else for this address.
        let impostor = sign(&key(10), &signed);
        assert_eq!(
            code(verify(&signed, &impostor, &expect(), NOW)),
            "siwe_invalid_signature"
        );
        // Shape fine, content nonsense.
        assert_eq!(
            code(verify(&signed, &dummy_sig(), &expect(), NOW)),
            "siwe_invalid_signature"
        );
        let zeros = format!("0x{}", "00".repeat(65));
        assert_eq!(code(verify(&signed, &zeros, &expect(), NOW)), "siwe_invalid_signature");
    }

    #[test]
    fn high_s_signatures_are_refused() {
        let k = key(11);
        let text = Msg::new(address_of(&k)).text();
        let message: siwe::Message = text.parse().expect("parses");
        let (sig, recid) = k
            .sign_prehash_recoverable(&message.eip191_hash().expect("hash"))
            .expect("signs");
        let (r, s) = sig.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -s).expect("valid scalars");
        let mut bytes = high.to_bytes().to_vec();
        bytes.push((recid.to_byte() ^ 1) + 27);
        let sig = format!("0x{}", hex::encode(bytes));
        assert_eq!(code(verify(&text, &sig, &expect(), NOW)), "siwe_invalid_signature");
    }

    #[test]
    fn signature_shape() {
        let text = Msg::new(address_of(&key(1))).text();
        let hex130 = "ab".repeat(65);
        for bad in [
            String::new(),
            "0x".into(),
            hex130.clone(),
            format!("0X{hex130}"),
            format!("0x{}", &hex130[..128]),
            format!("0x{hex130}00"),
            format!("0x{}zz", &hex130[..128]),
            format!("0x{}é", &hex130[..128]),
            format!(" 0x{hex130}"),
        ] {
            assert_eq!(
                parse_signature(&bad).expect_err("bad shape").code(),
                "siwe_invalid_signature",
                "{bad:?}"
            );
            assert_eq!(
                code(verify(&text, &bad, &expect(), NOW)),
                "siwe_invalid_signature",
                "{bad:?}"
            );
        }
        assert_eq!(parse_signature(&format!("0x{hex130}")).expect("shape")[64], 0xab);
    }

    #[test]
    fn oversized_messages_are_refused_before_parsing() {
        let text = Msg::new(address_of(&key(1))).text();
        let e = SiweExpectations {
            max_message_bytes: text.len() - 1,
            ..expect()
        };
        let err = verify(&text, "garbage", &e, NOW).expect_err("too large");
        assert!(
            matches!(err, Error::PayloadTooLarge { what: "SIWE message", limit } if limit == text.len() - 1),
            "{err:?}"
        );
        let garbage = "x".repeat(5000);
        assert_eq!(code(verify(&garbage, "", &expect(), NOW)), "payload_too_large");
        // Exactly at the limit is fine (it fails later, on the dummy signature).
        let e = SiweExpectations {
            max_message_bytes: text.len(),
            ..expect()
        };
        assert_eq!(code(verify(&text, &dummy_sig(), &e, NOW)), "siwe_invalid_signature");
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            "",
            "hello",
            "\n\n\n",
            "0x",
            " wants you to sign in with your Ethereum account:",
            "\u{0}\u{ffff}",
        ] {
            assert_eq!(
                code(verify(bad, &dummy_sig(), &expect(), NOW)),
                "siwe_malformed",
                "{bad:?}"
            );
        }
        // Malformed wins over a bad signature shape (parse comes first).
        assert_eq!(code(verify("hello", "nope", &expect(), NOW)), "siwe_malformed");
    }

    #[test]
    fn non_canonical_or_non_alphanumeric_text_is_malformed() {
        let k = key(2);
        let m = Msg::new(address_of(&k));
        // The siwe crate accepts these, but would verify the signature over different text.
        for text in [
            Msg {
                chain_id: "01",
                ..Msg::new(address_of(&k))
            }
            .text(),
            Msg {
                chain_id: "+1",
                ..Msg::new(address_of(&k))
            }
            .text(),
            m.text()
                .replace("Sign in to CoolChat\n\n", "Sign in to CoolChat\nsmuggled line\n"),
            format!("{}\nResources:", m.text()),
        ] {
            assert!(text.parse::<siwe::Message>().is_ok(), "the crate parses {text:?}");
            assert_eq!(
                code(verify(&text, &sign(&k, &text), &expect(), NOW)),
                "siwe_malformed",
                "{text:?}"
            );
        }
        let text = Msg {
            nonce: "abcd-efgh-1234",
            ..Msg::new(address_of(&k))
        }
        .text();
        assert_eq!(code(verify(&text, &sign(&k, &text), &expect(), NOW)), "siwe_malformed");
        // Trailing newline and CRLF are refused by the crate already.
        assert_eq!(
            code(verify(&format!("{}\n", m.text()), &dummy_sig(), &expect(), NOW)),
            "siwe_malformed"
        );
        assert_eq!(
            code(verify(&m.text().replace('\n', "\r\n"), &dummy_sig(), &expect(), NOW)),
            "siwe_malformed"
        );
    }

    #[test]
    fn domain_must_match_case_insensitively() {
        let k = key(3);
        let a = address_of(&k);
        for (domain, ok) in [
            ("127.0.0.1:8080", true),
            ("127.0.0.1:8081", false),
            ("127.0.0.1", false),
            ("evil@127.0.0.1:8080", false),
            ("example.com", false),
        ] {
            let text = Msg { domain, ..Msg::new(a) }.text();
            let r = verify(&text, &sign(&k, &text), &expect(), NOW);
            if ok {
                r.expect(domain);
            } else {
                assert_eq!(code(r), "siwe_domain_mismatch", "{domain}");
            }
        }
        let e = SiweExpectations {
            domain: "chat.example.com",
            uri_origin: "https://chat.example.com",
            ..expect()
        };
        let text = Msg {
            domain: "Chat.EXAMPLE.com",
            uri: "https://chat.example.com",
            ..Msg::new(a)
        }
        .text();
        verify(&text, &sign(&k, &text), &e, NOW).expect("domain is case-insensitive");
    }

    #[test]
    fn uri_must_have_our_scheme_and_authority() {
        let k = key(4);
        let a = address_of(&k);
        for (uri, ok) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.0.0.1:8080/", true),
            ("http://127.0.0.1:8080/login?x=1#f", true),
            ("HTTP://127.0.0.1:8080/login", true),
            ("https://127.0.0.1:8080", false),
            ("ws://127.0.0.1:8080", false),
            ("http://127.0.0.1:8081", false),
            ("http://127.0.0.1", false),
            ("http://localhost:8080", false),
            ("http://127.0.0.1:8080@evil.com", false),
            ("http://127.0.0.1.evil.com:8080", false),
            ("http://user@127.0.0.1:8080", false),
            ("did:key:z6Mktud6LcDFb3heS7FFWoJhiCafmUPkCAgpvJLv5E6fgBJg", false),
            ("urn:127.0.0.1:8080", false),
        ] {
            let text = Msg { uri, ..Msg::new(a) }.text();
            let r = verify(&text, &sign(&k, &text), &expect(), NOW);
            if ok {
                r.expect(uri);
            } else {
                assert_eq!(code(r), "siwe_uri_mismatch", "{uri}");
            }
        }
        // Host comparison is case-insensitive.
        let e = SiweExpectations {
            domain: "chat.example.com",
            uri_origin: "https://chat.example.com",
            ..expect()
        };
        let text = Msg {
            domain: "chat.example.com",
            uri: "https://CHAT.example.com/app",
            ..Msg::new(a)
        }
        .text();
        verify(&text, &sign(&k, &text), &e, NOW).expect("host is case-insensitive");
        // A broken expectation is our bug, not the client's.
        let text = Msg::new(a).text();
        let e = SiweExpectations {
            uri_origin: "127.0.0.1:8080",
            ..expect()
        };
        assert_eq!(code(verify(&text, &sign(&k, &text), &e, NOW)), "internal");
    }

    #[test]
    fn chain_must_be_allowed() {
        let k = key(5);
        let a = address_of(&k);
        for (chain_id, ok) in [
            ("1", true),
            ("10", true),
            ("5", false),
            ("137", false),
            ("18446744073709551615", false),
        ] {
            let text = Msg {
                chain_id,
                ..Msg::new(a)
            }
            .text();
            let r = verify(&text, &sign(&k, &text), &expect(), NOW);
            if ok {
                assert_eq!(r.expect(chain_id).chain_id.to_string(), chain_id);
            } else {
                assert_eq!(code(r), "siwe_chain_not_allowed", "{chain_id}");
            }
        }
        let text = Msg::new(a).text();
        let none = SiweExpectations {
            allowed_chain_ids: &[],
            ..expect()
        };
        assert_eq!(
            code(verify(&text, &sign(&k, &text), &none, NOW)),
            "siwe_chain_not_allowed"
        );
    }

    #[test]
    fn expiration_and_not_before() {
        let k = key(6);
        let a = address_of(&k);
        let cases = [
            (Some("2030-06-01T12:00:01Z"), None, "ok"),
            (Some("2030-06-01T12:00:00Z"), None, "siwe_expired"),
            (Some("2030-06-01T11:59:30Z"), None, "siwe_expired"),
            (Some("2030-06-01T14:00:00+02:00"), None, "siwe_expired"),
            (None, None, "ok"),
            (None, Some("2030-06-01T12:00:00Z"), "ok"),
            (None, Some("2030-06-01T12:00:00.001Z"), "siwe_not_yet_valid"),
            (None, Some("2030-06-01T13:00:00+02:00"), "ok"),
            // Expired wins over not-yet-valid.
            (
                Some("2030-06-01T11:00:00Z"),
                Some("2030-06-01T13:00:00Z"),
                "siwe_expired",
            ),
        ];
        for (expiration, not_before, want) in cases {
            let text = Msg {
                expiration,
                not_before,
                ..Msg::new(a)
            }
            .text();
            let r = verify(&text, &sign(&k, &text), &expect(), NOW);
            if want == "ok" {
                r.expect(&text);
            } else {
                assert_eq!(code(r), want, "{expiration:?} {not_before:?}");
            }
        }
    }

    #[test]
    fn issued_at_skew() {
        let k = key(12);
        let a = address_of(&k);
        for (issued_at, ok) in [
            ("2030-06-01T12:00:00Z", true),
            ("2030-06-01T12:05:00Z", true),
            ("2030-06-01T11:55:00Z", true),
            ("2030-06-01T12:05:00.001Z", false),
            ("2030-06-01T11:54:59.999Z", false),
            ("2030-06-01T14:00:00+02:00", true),
            ("2030-06-01T16:00:00+02:00", false),
            ("2000-01-01T00:00:00Z", false),
            ("2999-01-01T00:00:00Z", false),
        ] {
            let text = Msg {
                issued_at,
                expiration: None,
                ..Msg::new(a)
            }
            .text();
            let sig = sign(&k, &text);
            let r = verify(&text, &sig, &expect(), NOW);
            if ok {
                r.expect(issued_at);
            } else {
                assert_eq!(code(r), "siwe_issued_at_skew", "{issued_at}");
                // Without a skew the check is skipped.
                let e = SiweExpectations {
                    issued_at_skew: None,
                    ..expect()
                };
                verify(&text, &sig, &e, NOW).expect("no skew check");
            }
        }
        // A skew too large for time::Duration must not panic either.
        let text = Msg {
            issued_at: "2000-01-01T00:00:00Z",
            expiration: None,
            ..Msg::new(a)
        }
        .text();
        let e = SiweExpectations {
            issued_at_skew: Some(Duration::MAX),
            ..expect()
        };
        verify(&text, &sign(&k, &text), &e, NOW).expect("huge skew accepts");
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let k = key(13);
        let a = address_of(&k);
        // Everything wrong at once: the domain wins over the later checks, the signature shape
        // over the domain.
        let text = Msg {
            domain: "evil.com",
            uri: "https://evil.com",
            chain_id: "5",
            expiration: Some("2000-01-01T00:00:00Z"),
            ..Msg::new(a)
        }
        .text();
        assert_eq!(code(verify(&text, "bad", &expect(), NOW)), "siwe_invalid_signature");
        assert_eq!(
            code(verify(&text, &dummy_sig(), &expect(), NOW)),
            "siwe_domain_mismatch"
        );
        let text = Msg {
            uri: "https://evil.com",
            chain_id: "5",
            expiration: Some("2000-01-01T00:00:00Z"),
            ..Msg::new(a)
        }
        .text();
        assert_eq!(code(verify(&text, &dummy_sig(), &expect(), NOW)), "siwe_uri_mismatch");
        let text = Msg {
            chain_id: "5",
            expiration: Some("2000-01-01T00:00:00Z"),
            ..Msg::new(a)
        }
        .text();
        assert_eq!(
            code(verify(&text, &dummy_sig(), &expect(), NOW)),
            "siwe_chain_not_allowed"
        );
        let text = Msg {
            expiration: Some("2000-01-01T00:00:00Z"),
            issued_at: "2000-01-01T00:00:00Z",
            ..Msg::new(a)
        }
        .text();
        assert_eq!(code(verify(&text, &dummy_sig(), &expect(), NOW)), "siwe_expired");
        let text = Msg {
            issued_at: "2000-01-01T00:00:00Z",
            ..Msg::new(a)
        }
        .text();
        assert_eq!(code(verify(&text, &dummy_sig(), &expect(), NOW)), "siwe_issued_at_skew");
    }

    #[test]
    fn no_input_panics() {
        let k = key(14);
        let text = Msg {
            not_before: Some("2030-06-01T11:00:00Z"),
            ..Msg::new(address_of(&k))
        }
        .text();
        let sig = sign(&k, &text);
        verify(&text, &sig, &expect(), NOW).expect("the base case verifies");
        let mut tried = 0usize;
        // Every prefix.
        for (i, _) in text.char_indices() {
            let _ = verify(&text[..i], &sig, &expect(), NOW);
            tried += 1;
        }
        // Every byte replaced by a few troublesome characters, and every byte removed.
        for i in 0..text.len() {
            for rep in ["", "\n", " ", ":", "@", "%", "é", "\u{0}", "9"] {
                let mutated = format!("{}{}{}", &text[..i], rep, &text[i + 1..]);
                let _ = verify(&mutated, &sig, &expect(), NOW);
                tried += 1;
            }
        }
        // Every signature byte flipped.
        let raw = parse_signature(&sig).expect("shape");
        for i in 0..65 {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = raw;
                b[i] ^= flip;
                let r = verify(&text, &format!("0x{}", hex::encode(b)), &expect(), NOW);
                // Any change either breaks the signature or recovers another key.
                assert!(r.is_err(), "byte {i} ^ {flip:#x} still verified");
                tried += 1;
            }
        }
        assert!(tried > 1000);
    }
}
