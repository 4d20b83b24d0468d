//! A minimal MQTT 3.1.1 client (OASIS MQTT 3.1.1 §2–§3) for the session scenarios: CONNECT,
//! CONNACK, PUBLISH at QoS 0/1 both ways, PUBACK, SUBSCRIBE, PINGREQ/PINGRESP.
//!
//! rumqttc runs a task and buffers per connection; holding 100k idle sessions needs one small
//! socket each and nothing else, so the session scenarios speak the wire format themselves.
//! Every byte read or written is counted on the connection (MQTT bytes, no TCP/IP headers).

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest packet accepted from the server; the scenarios never expect more than a few hundred bytes.
const MAX_PACKET: usize = 64 * 1024;

/// What a CONNECT carries.
pub struct ConnectOpts<'a> {
    pub client_id: &'a str,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub clean: bool,
    pub keepalive_s: u16,
}

/// One packet from the server: its type (high nibble of the first byte), flags, and body.
#[derive(Debug)]
pub struct Packet {
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;

/// A PUBLISH from the server.
pub struct Publish<'a> {
    pub topic: &'a str,
    pub packet_id: Option<u16>,
    pub payload: &'a [u8],
}

impl Packet {
    /// The PUBLISH inside, if this is one (and it is well formed).
    pub fn publish(&self) -> Option<Publish<'_>> {
        if self.kind != PUBLISH {
            return None;
        }
        let b = &self.body;
        let len = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        let topic = std::str::from_utf8(b.get(2..2 + len)?).ok()?;
        let mut at = 2 + len;
        let packet_id = if self.flags & 0b0110 != 0 {
            at += 2;
            Some(u16::from_be_bytes([*b.get(at - 2)?, *b.get(at - 1)?]))
        } else {
            None
        };
        Some(Publish { topic, packet_id, payload: b.get(at..)? })
    }

    /// CONNACK's (session present, return code).
    pub fn connack(&self) -> Option<(bool, u8)> {
        (self.kind == CONNACK && self.body.len() == 2).then(|| (self.body[0] & 1 == 1, self.body[1]))
    }

    /// The packet id of a PUBACK.
    pub fn puback_id(&self) -> Option<u16> {
        (self.kind == PUBACK && self.body.len() == 2)
            .then(|| u16::from_be_bytes([self.body[0], self.body[1]]))
    }
}

/// An open MQTT connection with its byte counters.
pub struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    /// Bytes at the front of `inbuf` already taken as packets.
    taken: usize,
    /// Whether the read buffer stays allocated between reads (load clients) or is freed once
    /// empty (idle sessions, which must cost little).
    keep_buffer: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends a fixed header: type and flags, then the remaining length (variable byte integer).
fn put_header(out: &mut Vec<u8>, first: u8, mut len: usize) {
    out.push(first);
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

/// A packet with its fixed header.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    put_header(&mut out, first, body.len());
    out.extend_from_slice(body);
    out
}

/// The bytes of a CONNECT packet.
pub fn connect_packet(o: &ConnectOpts) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    put_str(&mut body, b"MQTT");
    body.push(4);
    let mut flags = if o.clean { 0x02 } else { 0 };
    if o.user.is_some() {
        flags |= 0x80;
    }
    if o.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&o.keepalive_s.to_be_bytes());
    put_str(&mut body, o.client_id.as_bytes());
    for s in [o.user, o.password].into_iter().flatten() {
        put_str(&mut body, s.as_bytes());
    }
    frame(0x10, &body)
}

/// The bytes of a PUBLISH packet (QoS 1 when `packet_id` is given, else QoS 0).
pub fn publish_packet(topic: &str, packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + payload.len() + 9);
    put_publish(&mut out, topic, packet_id, payload);
    out
}

/// Appends a PUBLISH packet (QoS 1 when `packet_id` is given, else QoS 0).
pub fn put_publish(out: &mut Vec<u8>, topic: &str, packet_id: Option<u16>, payload: &[u8]) {
    let len = 2 + topic.len() + if packet_id.is_some() { 2 } else { 0 } + payload.len();
    put_header(out, if packet_id.is_some() { 0x32 } else { 0x30 }, len);
    put_str(out, topic.as_bytes());
    if let Some(id) = packet_id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a PUBACK of packet `id`.
pub fn put_puback(out: &mut Vec<u8>, id: u16) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&id.to_be_bytes());
}

/// A TCP connection to `addr` from `bind` (any port), without Nagle's delay: what every load
/// client of the session scenarios opens, MQTT or XMPP.
pub(crate) async fn tcp_from(addr: SocketAddr, bind: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = bind {
        no_port_at_bind(&socket);
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}"))?;
    }
    let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets the kernel pick the source port at connect time, by the whole 4-tuple (Linux
/// IP_BIND_ADDRESS_NO_PORT): otherwise a bind to port 0 reserves a port for any destination,
/// and a second system on other ports of the run finds them all taken by TIME_WAIT.
fn no_port_at_bind(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Conn {
    /// Opens TCP from `bind` (any port) to `addr`; nothing is sent yet.
    pub async fn open(addr: SocketAddr, bind: Option<IpAddr>) -> anyhow::Result<Conn> {
        let stream = tcp_from(addr, bind).await?;
        Ok(Conn { stream, inbuf: Vec::new(), taken: 0, keep_buffer: false, bytes_in: 0, bytes_out: 0 })
    }

    /// Opens TCP, sends CONNECT and waits for CONNACK; returns it as (session present, code).
    pub async fn connect(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        o: &ConnectOpts<'_>,
    ) -> anyhow::Result<(Conn, bool, u8)> {
        let mut c = Conn::open(addr, bind).await?;
        c.send(&connect_packet(o)).await?;
        let p = c.read().await?;
        let (present, code) =
            p.connack().with_context(|| format!("expected CONNACK, got type {}", p.kind))?;
        Ok((c, present, code))
    }

    /// Writes raw packet bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.bytes_out += bytes.len() as u64;
        Ok(())
    }

    pub async fn puback(&mut self, id: u16) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(4);
        put_puback(&mut out, id);
        self.send(&out).await
    }

    /// Keeps the read buffer between reads: for a load client, which reads all the time.
    pub fn keep_read_buffer(&mut self) {
        self.keep_buffer = true;
    }

    /// DISCONNECT, then close (errors ignored: the server may already be gone).
    pub async fn disconnect(&mut self) {
        let _ = self.send(&[0xE0, 0]).await;
        let _ = self.stream.shutdown().await;
    }

    pub async fn pingreq(&mut self) -> anyhow::Result<()> {
        self.send(&[0xC0, 0]).await
    }

    /// SUBSCRIBE to one filter at QoS 1 (packet id 1); the SUBACK comes through `read`.
    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        let mut body = vec![0, 1];
        put_str(&mut body, filter.as_bytes());
        body.push(1);
        self.send(&frame(0x82, &body)).await
    }

    /// The next packet from the server.
    pub async fn read(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Reads what the server sent next (at least one byte) for [`Conn::next_packet`]. Cancel
    /// safe: a read that did not finish took nothing.
    pub async fn fill(&mut self) -> anyhow::Result<()> {
        if self.taken > 0 {
            self.inbuf.drain(..self.taken);
            self.taken = 0;
        }
        self.inbuf.reserve(if self.keep_buffer { 16 * 1024 } else { 4096 });
        let n = self.stream.read_buf(&mut self.inbuf).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.bytes_in += n as u64;
        Ok(())
    }

    /// The next whole packet already read, if any.
    pub fn next_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        let b = &self.inbuf[self.taken..];
        let (mut len, mut shift, mut at) = (0usize, 0, 1);
        loop {
            let Some(&byte) = b.get(at) else { return Ok(None) };
            len |= ((byte & 0x7F) as usize) << shift;
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                bail!("malformed remaining length");
            }
        }
        if len > MAX_PACKET {
            bail!("packet of {len} bytes from the server");
        }
        if b.len() < at + len {
            return Ok(None);
        }
        let p = Packet { kind: b[0] >> 4, flags: b[0] & 0x0F, body: b[at..at + len].to_vec() };
        self.taken += at + len;
        if self.taken == self.inbuf.len() {
            self.taken = 0;
            if self.keep_buffer {
                self.inbuf.clear();
            } else {
                // An idle session keeps no read buffer around.
                self.inbuf = Vec::new();
            }
        }
        Ok(Some(p))
    }

    /// Drops the TCP connection with a reset, without DISCONNECT, as a phone losing its network.
    pub fn abort(self) {
        // SO_LINGER 0 makes close() send RST at once instead of a FIN handshake.
        let _ = self.stream.set_zero_linger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet(&ConnectOpts {
            client_id: "d",
            user: Some("u"),
            password: Some("p"),
            clean: false,
            keepalive_s: 60,
        });
        assert_eq!(
            p,
            [0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC0, 0, 60, 0, 1, b'd', 0, 1, b'u', 0, 1, b'p']
        );
    }

    #[test]
    fn long_remaining_length_takes_two_bytes() {
        let p = publish_packet("t", Some(7), &[0; 200]);
        // 205 = 1 × 128 + 77: the low seven bits first, with the continuation bit.
        assert_eq!(&p[..3], &[0x32, 77 | 0x80, 1]);
    }

    #[tokio::test]
    async fn packets_split_across_reads_come_out_whole_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bytes = publish_packet("d", Some(1), b"first");
        put_puback(&mut bytes, 7);
        let total = bytes.len() as u64;
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&bytes[..5]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.write_all(&bytes[5..]).await.unwrap();
        });
        let mut c = Conn::open(addr, None).await.unwrap();
        c.keep_read_buffer();
        assert_eq!(c.read().await.unwrap().publish().unwrap().payload, b"first");
        assert_eq!(c.read().await.unwrap().puback_id(), Some(7));
        assert!(c.next_packet().unwrap().is_none());
        assert_eq!(c.bytes_in, total);
        server.await.unwrap();
    }

    #[test]
    fn publish_parses_back() {
        let bytes = publish_packet("d", Some(9), b"xyz");
        let p = Packet { kind: bytes[0] >> 4, flags: bytes[0] & 0xF, body: bytes[2..].to_vec() };
        let pb = p.publish().unwrap();
        assert_eq!((pb.topic, pb.packet_id, pb.payload), ("d", Some(9), &b"xyz"[..]));
        let short = Packet { kind: PUBLISH, flags: 2, body: vec![0, 5, b'a'] };
        assert!(short.publish().is_none());
    }
}
