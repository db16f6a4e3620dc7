use super::*;

#[test]
fn pieces_keep_characters_whole() {
    let text = "héllo 汉字 wörld".repeat(20);
    let parts = split_bytes(&text, 7);
    assert_eq!(parts.concat(), text);
    assert!(parts.iter().all(|p| p.len() <= 7 && !p.is_empty()));
    assert_eq!(cut_at("汉字", 4), "汉");
    assert_eq!(split_bytes("", 9), vec![""]);
}

#[test]
fn values_are_told_apart_on_the_main_port() {
    let edge = Edge::new(Listen::Auto);
    let mut d = Decoder::new(&edge);
    let mut out = Vec::new();
    let now = Instant::now();
    for v in [
        &br#"{"msgid":1,"id":1,"password":"x"}"#[..],
        br#"{"msgType":1,"USERID":1,"password":"x"}"#,
        br#"{"type":"ping"}"#,
    ] {
        d.decode(v, now, &mut out).unwrap();
    }
    let dialects: Vec<Dialect> = out.iter().map(|i| i.ctx().dialect()).collect();
    assert_eq!(
        dialects,
        [
            Dialect::Classic(Numbering::Course),
            Dialect::Sponge,
            Dialect::Native
        ]
    );
    assert_eq!(d.dialect(), Dialect::Native);
    // Bad JSON closes a native stream but not a sponge one.
    assert!(d.decode(br#"{"type":"x\q"}"#, now, &mut out).is_err());
    assert!(d
        .decode(br#"{"msgType":4,"msg":"a\q"}"#, now, &mut out)
        .is_ok());
}

proptest::proptest! {
    /// Whatever bytes arrive, in whatever reads, no dialect panics.
    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(
        which in 0usize..7,
        chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..8),
    ) {
        let listen = match which {
            0 => Listen::Auto,
            1 => Listen::Only(Dialect::Native),
            2 => Listen::Only(Dialect::Classic(Numbering::Course)),
            3 => Listen::Only(Dialect::Sponge),
            4 => Listen::Only(Dialect::GoChatroom),
            5 => Listen::Only(Dialect::CChatroom),
            _ => Listen::Only(Dialect::EpollChatroom),
        };
        let edge = Edge::new(listen);
        let mut d = Decoder::new(&edge);
        let mut framer = crate::framing::Framer::new(listen.framing(), 1 << 16);
        let mut out = Vec::new();
        let now = Instant::now();
        'feed: for c in chunks {
            framer.push(&c);
            while let Ok(Some(v)) = framer.next_value() {
                if d.decode(v, now, &mut out).is_err() {
                    break 'feed;
                }
            }
        }
        // Every request decoded can be answered in its dialect.
        let mut frames = Frames::default();
        for i in &out {
            encode_reply(i.ctx(), &Err(ChatError::new(ErrorCode::BadRequest, "x")), &mut frames);
        }
    }
}

#[test]
fn dialects_round_trip_through_u8() {
    for d in [
        Dialect::Native,
        Dialect::Classic(Numbering::Course),
        Dialect::Classic(Numbering::Thousand),
        Dialect::Sponge,
        Dialect::GoChatroom,
        Dialect::CChatroom,
        Dialect::EpollChatroom,
    ] {
        assert_eq!(Dialect::from_u8(d.to_u8()), d);
        assert!(Listen::from_name(d.name()).is_some());
    }
}

#[test]
fn unpaced_classic_pushes_are_gathered_and_the_rest_keep_their_writes() {
    for n in [Numbering::Course, Numbering::Thousand] {
        let classic = Dialect::Classic(n);
        assert_eq!(classic.writes(true), Writes::OneEach { paced: true });
        assert_eq!(classic.writes(false), Writes::Gathered);
    }
    // Sponge values have no terminator: one per write, paced or not.
    assert_eq!(
        Dialect::Sponge.writes(false),
        Writes::OneEach { paced: false }
    );
    assert_eq!(
        Dialect::Sponge.writes(true),
        Writes::OneEach { paced: true }
    );
    for d in [Dialect::GoChatroom, Dialect::CChatroom] {
        assert_eq!(d.writes(true), Writes::OneEach { paced: false });
    }
    assert_eq!(Dialect::Native.writes(true), Writes::Gathered);
}

/// Where the fast path for a message's requests and the JSON map read the
/// same value, they agree; `only` as on each kind of port.
fn both_ways(bytes: &[u8]) {
    let ports = [
        None,
        Some(Dialect::Native),
        Some(Dialect::Web),
        Some(Dialect::Classic(Numbering::Course)),
    ];
    for only in ports {
        let last = only.unwrap_or(Dialect::Native);
        let fast = format!("{:?}", decode_json(bytes, last, only));
        let map = format!("{:?}", decode_map(bytes, last, only));
        assert_eq!(fast, map, "{} on {only:?}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn a_message_s_requests_take_the_fast_path() {
    let send = br#"{"type":"send","to":8,"text":"hi \"there\"","req":3}"#;
    let ack = br#"{"type":"ack","ids":[1,2,3]}"#;
    let chat = br#"{"msgid":1005,"id":7,"name":"al","toid":8,"msg":"hi","time":"t"}"#;
    let group = br#"{"msgid":10,"id":7,"name":"al","groupid":3,"msg":"hi"}"#;
    assert!(native::decode_fast(send, false).is_some());
    assert!(native::decode_fast(ack, true).is_some());
    for v in [&send[..], ack, chat, group] {
        both_ways(v);
    }
    // What the map reads its own way: a repeated key (the last wins), ids
    // and user ids as strings, a string `req`, numbers in other forms, an
    // array (which serde would read as a struct's fields in order).
    let many = |n: usize| {
        let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        format!(r#"{{"type":"ack","ids":[{}]}}"#, ids.join(","))
    };
    let (max, past) = (
        many(crate::api::MAX_ACK_IDS),
        many(crate::api::MAX_ACK_IDS + 1),
    );
    for v in [
        &br#"{"type":"send","to":8,"to":9,"text":"x"}"#[..],
        br#"{"type":"send","type":"ack","ids":[1]}"#,
        br#"{"type":"ack","req":null,"req":1,"ids":[1]}"#,
        br#"{"type":"ack","ids":["1","2"]}"#,
        br#"{"msgid":6,"toid":"8","msg":"hi"}"#,
        br#"{"type":"send","to":8,"text":"x","req":"r-1"}"#,
        br#"["send",null,8,null,"hi",null,null]"#,
        br#" ["ack",7,null,null,null,null,[1,2]]"#,
        br#"{"type":"send","to":5.0,"text":"x"}"#,
        br#"{"type":"send","to":5e0,"text":"x"}"#,
        br#"{"type":"send","to":-0,"text":"x"}"#,
        br#"{"type":"send","to":2147483648,"text":"x"}"#,
        br#"{"type":"send","to":4294967296,"text":"x"}"#,
        br#"{"type":"send","to":8,"text":null}"#,
        br#"{"type":"send","to":8,"text":"x","req":9223372036854775808}"#,
        br#"{"type":"send","to":8,"text":"x","req":1.0}"#,
        br#"{"type":"ack","ids":[-1]}"#,
        past.as_bytes(),
        b"\xef\xbb\xbf{\"type\":\"ack\",\"ids\":[1]}",
        b"{\"type\":\"send\",\"to\":8,\"text\":\"\xff\"}",
    ] {
        assert!(native::decode_fast(v, false).is_none());
        both_ways(v);
    }
    // And alike both ways: escapes, edges of the ids, a null group.
    for v in [
        &br#"{"t\u0079pe":"s\u0065nd","to":8,"text":"a\u0000\"b"}"#[..],
        br#"{"type":"send","to":2147483647,"group":null,"text":"x","req":-9223372036854775808}"#,
        br#"{"type":"ack","ids":[18446744073709551615]}"#,
        br#"{"type":"ack","ids":[]}"#,
        br#" {"type":"ack","ids":[1]} "#,
        max.as_bytes(),
    ] {
        assert!(native::decode_fast(v, false).is_some());
        both_ways(v);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10000))]

    /// A message's request with a few fields set to other values, or gone.
    #[test]
    fn the_fast_path_and_the_map_agree(
        base in 0..4usize,
        changes in proptest::collection::vec((0..17usize, 0..23usize), 0..4)
    ) {
        const BASES: [&str; 4] = [
            r#"{"type":"send","to":8,"text":"hi","cid":"c1","req":3}"#,
            r#"{"type":"ack","ids":[1,2,3],"req":4}"#,
            r#"{"msgid":1005,"id":7,"name":"al","toid":8,"msg":"hi","time":"t"}"#,
            r#"{"msgid":10,"id":7,"name":"al","groupid":3,"msg":"hi"}"#,
        ];
        const KEYS: [&str; 17] = [
            "type", "req", "to", "group", "text", "cid", "ids", "msgid", "id",
            "name", "toid", "groupid", "msg", "time", "msgType", "extra", "pwd",
        ];
        // The last one takes the field away.
        const VALUES: [&str; 23] = [
            "null", "0", "5", "-1", "2147483648", "\"5\"", "\"x\"", "\"send\"",
            "\"ack\"", "1.5", "[1,2]", "[\"1\"]", "[]", "true", "\"a\\\"b\"",
            "\"\\u00e9\"", "6", "1005", "10", "1009", "\"login\"", "{}", "",
        ];
        let mut v: serde_json::Map<String, Value> = serde_json::from_str(BASES[base]).unwrap();
        for (k, val) in changes {
            match VALUES[val] {
                "" => v.remove(KEYS[k]),
                json => v.insert(KEYS[k].to_string(), serde_json::from_str(json).unwrap()),
            };
        }
        both_ways(&serde_json::to_vec(&v).unwrap());
    }
}
