use super::*;
use bytes::Bytes;
use proptest::prelude::*;

fn v4_connect() -> BytesMut {
    let mut c = v4::Connect::new("phone");
    c.keep_alive = 600;
    c.clean_session = false;
    c.set_login("alice", "pw");
    let mut buf = BytesMut::new();
    v4::Packet::Connect(c).write(&mut buf, 1 << 20).unwrap();
    buf
}

#[test]
fn a_v4_connect_fixes_the_version_and_carries_the_login() {
    let mut codec = Codec::new(1024);
    let mut buf = v4_connect();
    let Some(Inbound::Connect(c)) = codec.decode(&mut buf).unwrap() else { panic!("connect expected") };
    assert_eq!(c.version, Version::V4);
    assert_eq!(c.client_id, "phone");
    assert!(!c.clean);
    assert_eq!(c.login, Some(("alice".into(), "pw".into())));
    assert_eq!(codec.version(), Some(Version::V4));
}

#[test]
fn a_v5_connect_is_recognised() {
    let mut buf = BytesMut::new();
    let c = v5::Connect { keep_alive: 30, client_id: "d1".into(), clean_start: true, properties: None };
    let login = v5::Login { username: "bob".into(), password: "x".into() };
    v5::Packet::Connect(c, None, Some(login)).write(&mut buf, None).unwrap();
    let mut codec = Codec::new(1024);
    let Some(Inbound::Connect(c)) = codec.decode(&mut buf).unwrap() else { panic!("connect expected") };
    assert_eq!((c.version, c.client_id.as_str()), (Version::V5, "d1"));
}

#[test]
fn split_input_waits_for_the_rest() {
    let full = v4_connect();
    for cut in 0..full.len() {
        let mut codec = Codec::new(1024);
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
        buf.extend_from_slice(&full[cut..]);
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Inbound::Connect(_))));
    }
}

#[test]
fn exact_errors_for_bad_streams() {
    let mut codec = Codec::new(1024);
    let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]); // PINGREQ before CONNECT
    assert_eq!(codec.decode(&mut buf), Err(CodecError::NotConnect));

    // Protocol level 3 (MQTT 3.1 "MQIsdp").
    let mut buf = BytesMut::from(&[0x10u8, 0x10, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0, 0, 0][..]);
    assert_eq!(Codec::new(1024).decode(&mut buf), Err(CodecError::UnsupportedLevel(3)));

    let mut codec = Codec::new(1024);
    let mut buf = v4_connect();
    codec.decode(&mut buf).unwrap();
    let mut big = BytesMut::new();
    v4::Publish::new("u", rumqttc::QoS::AtMostOnce, vec![0u8; 2000]).write(&mut big).unwrap();
    assert_eq!(codec.decode(&mut big), Err(CodecError::TooLarge(1024)));

    let mut again = v4_connect();
    assert_eq!(codec.decode(&mut again), Err(CodecError::NotConnect));
}

#[test]
fn outbound_publish_round_trips_through_a_client_decoder() {
    let mut codec = Codec::new(1024);
    codec.decode(&mut v4_connect()).unwrap();
    let mut buf = BytesMut::new();
    codec.encode(
        Outbound::Publish {
            topic: "d".into(),
            payload: Bytes::from_static(b"xy"),
            qos: 1,
            pkid: 7,
            retain: false,
        },
        &mut buf,
    );
    let v4::Packet::Publish(p) = v4::Packet::read(&mut buf, 1024).unwrap() else {
        panic!("publish expected")
    };
    assert_eq!((p.topic.as_str(), p.pkid, &p.payload[..]), ("d", 7, &b"xy"[..]));
}

proptest! {
    #[test]
    fn random_bytes_after_connect_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut codec = Codec::new(4096);
        let mut buf = v4_connect();
        buf.extend_from_slice(&bytes);
        for _ in 0..64 {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn random_first_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = Codec::new(4096).decode(&mut buf);
    }
}
