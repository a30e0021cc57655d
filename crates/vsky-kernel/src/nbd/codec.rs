//! The nbd family's netlink messages: requests encoded and replies decoded
//! on plain byte buffers, so every layout is unit-tested on exact bytes.
//! Every parse is bounds-checked; malformed input is
//! [`NbdError::Malformed`](super::NbdError::Malformed), never a panic.

use super::{ConnectRequest, NbdDeviceStatus, NbdError, NbdEvent, NbdIndex, Result};

// ---------------------------------------------------------------------------
// The codec: netlink header (16 bytes), genl header (4 bytes), attributes
// (u16 len incl. 4-byte header, u16 type, payload padded to 4 bytes). All in
// host byte order, which netlink defines as native.
// ---------------------------------------------------------------------------

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
pub(super) const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
const NLMSG_HDR_LEN: usize = 16;
const GENL_HDR_LEN: usize = 4;

pub(super) const GENL_ID_CTRL: u16 = 0x10;
pub(super) const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub(super) const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// The family's highest attribute type (`genetlink.c` sends it since the
/// controller exists; 4.19's `ctrl_fill_info` l.660).
const CTRL_ATTR_MAXATTR: u16 = 5;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
pub(super) const NBD_MCAST_GROUP: &str = "nbd_mc_group";

pub(super) const NBD_FAMILY_NAME: &str = "nbd";
pub(super) const NBD_GENL_VERSION: u8 = 1;
pub(super) const NBD_CMD_CONNECT: u8 = 1;
pub(super) const NBD_CMD_DISCONNECT: u8 = 2;
pub(super) const NBD_CMD_RECONFIGURE: u8 = 3;
const NBD_CMD_LINK_DEAD: u8 = 4;
pub(super) const NBD_CMD_STATUS: u8 = 5;
pub(super) const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_ATTR_DEVICE_LIST: u16 = 9;
pub(super) const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_DEVICE_ITEM: u16 = 1;
const NBD_DEVICE_INDEX: u16 = 1;
const NBD_DEVICE_CONNECTED: u16 = 2;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds a flat attribute stream; nesting via [`AttrWriter::nested`].
#[derive(Default, Debug, Clone)]
pub(super) struct AttrWriter {
    pub(super) buf: Vec<u8>,
}

impl AttrWriter {
    pub(super) fn raw(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }
    pub(super) fn u32(&mut self, kind: u16, v: u32) {
        self.raw(kind, &v.to_ne_bytes());
    }
    pub(super) fn u64(&mut self, kind: u16, v: u64) {
        self.raw(kind, &v.to_ne_bytes());
    }
    pub(super) fn string(&mut self, kind: u16, s: &str) {
        let mut p = s.as_bytes().to_vec();
        p.push(0);
        self.raw(kind, &p);
    }
    pub(super) fn nested(&mut self, kind: u16, inner: &AttrWriter) {
        self.raw(kind | NLA_F_NESTED, &inner.buf);
    }
}

pub(super) fn encode_sockets(attrs: &mut AttrWriter, fds: impl Iterator<Item = u32>) {
    let mut list = AttrWriter::default();
    for fd in fds {
        let mut item = AttrWriter::default();
        item.u32(NBD_SOCK_FD, fd);
        list.nested(NBD_SOCK_ITEM, &item);
    }
    attrs.nested(NBD_ATTR_SOCKETS, &list);
}

pub(super) fn encode_connect(req: &ConnectRequest, fds: impl Iterator<Item = u32>) -> AttrWriter {
    let mut a = AttrWriter::default();
    if let Some(i) = req.index {
        a.u32(NBD_ATTR_INDEX, i);
    }
    a.u64(NBD_ATTR_SIZE_BYTES, req.size_bytes);
    a.u64(NBD_ATTR_BLOCK_SIZE_BYTES, req.block_size_bytes);
    a.u64(NBD_ATTR_SERVER_FLAGS, u64::from(req.server_flags));
    a.u64(NBD_ATTR_TIMEOUT, req.timeout.as_secs());
    a.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, req.dead_conn_timeout.as_secs());
    a.string(NBD_ATTR_BACKEND_IDENTIFIER, &req.backend_identifier);
    encode_sockets(&mut a, fds);
    a
}

pub(super) fn encode_request(
    family: u16,
    cmd: u8,
    version: u8,
    seq: u32,
    attrs: &AttrWriter,
) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + GENL_HDR_LEN + attrs.buf.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&[cmd, version, 0, 0]);
    m.extend_from_slice(&attrs.buf);
    m
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GenlMessage {
    pub(super) cmd: u8,
    pub(super) attrs: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NlBody {
    Ack,
    /// A positive errno.
    Error(i32),
    Done,
    Genl(GenlMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NlMessage {
    /// nlmsg_type: the family id for generic netlink messages.
    pub(super) kind: u16,
    pub(super) seq: u32,
    pub(super) body: NlBody,
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into netlink messages.
pub(super) fn decode_messages(mut buf: &[u8]) -> Result<Vec<NlMessage>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR_LEN {
        let bad = |m: &str| NbdError::Malformed(m.to_string());
        let len = read_u32(buf, 0).ok_or_else(|| bad("short header"))? as usize;
        let kind = read_u16(buf, 4).ok_or_else(|| bad("short header"))?;
        let seq = read_u32(buf, 8).ok_or_else(|| bad("short header"))?;
        if len < NLMSG_HDR_LEN || len > buf.len() {
            return Err(NbdError::Malformed(format!(
                "netlink message length {len} outside 16..={}",
                buf.len()
            )));
        }
        let payload = &buf[NLMSG_HDR_LEN..len];
        let body = match kind {
            NLMSG_ERROR => {
                let err = read_u32(payload, 0).ok_or_else(|| bad("short NLMSG_ERROR"))? as i32;
                if err == 0 {
                    NlBody::Ack
                } else {
                    NlBody::Error(err.checked_neg().unwrap_or(libc::EINVAL))
                }
            }
            NLMSG_DONE => NlBody::Done,
            _ => {
                if payload.len() < GENL_HDR_LEN {
                    return Err(bad("generic netlink message shorter than its header"));
                }
                NlBody::Genl(GenlMessage {
                    cmd: payload[0],
                    attrs: payload[GENL_HDR_LEN..].to_vec(),
                })
            }
        };
        out.push(NlMessage { kind, seq, body });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// One attribute, borrowed from its stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attr<'a> {
    pub(super) kind: u16,
    payload: &'a [u8],
}

impl Attr<'_> {
    pub(super) fn u8(&self) -> Result<u8> {
        self.payload
            .first()
            .copied()
            .ok_or_else(|| NbdError::Malformed(format!("attribute {} is not a u8", self.kind)))
    }
    pub(super) fn u16(&self) -> Result<u16> {
        read_u16(self.payload, 0)
            .ok_or_else(|| NbdError::Malformed(format!("attribute {} is not a u16", self.kind)))
    }
    pub(super) fn u32(&self) -> Result<u32> {
        read_u32(self.payload, 0)
            .ok_or_else(|| NbdError::Malformed(format!("attribute {} is not a u32", self.kind)))
    }
}

/// Iterator over an attribute stream; yields an error (once) on a bad length.
pub(super) struct Attrs<'a> {
    pub(super) buf: &'a [u8],
    pub(super) failed: bool,
}

impl<'a> Attrs<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Attrs { buf, failed: false }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.len() < 4 {
            return None;
        }
        let len = read_u16(self.buf, 0)? as usize;
        let kind = read_u16(self.buf, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            self.failed = true;
            return Some(Err(NbdError::Malformed(format!(
                "attribute {kind} length {len} outside 4..={}",
                self.buf.len()
            ))));
        }
        let payload = &self.buf[4..len];
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some(Ok(Attr { kind, payload }))
    }
}

pub(super) fn decode_status(attrs: &[u8]) -> Result<Vec<NbdDeviceStatus>> {
    let mut out = Vec::new();
    for a in Attrs::new(attrs) {
        let a = a?;
        if a.kind != NBD_ATTR_DEVICE_LIST {
            continue;
        }
        for item in Attrs::new(a.payload) {
            let item = item?;
            if item.kind != NBD_DEVICE_ITEM {
                continue;
            }
            let (mut index, mut connected) = (None, false);
            for f in Attrs::new(item.payload) {
                let f = f?;
                match f.kind {
                    NBD_DEVICE_INDEX => index = Some(f.u32()?),
                    NBD_DEVICE_CONNECTED => connected = f.u8()? != 0,
                    _ => {}
                }
            }
            let index =
                index.ok_or_else(|| NbdError::Malformed("device item without an index".into()))?;
            out.push(NbdDeviceStatus {
                index: NbdIndex(index),
                connected,
            });
        }
    }
    Ok(out)
}

/// The family id and multicast groups from the generic netlink controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FamilyInfo {
    pub(super) id: u16,
    pub(super) groups: Vec<(String, u32)>,
    /// The highest attribute type the family parses (`CTRL_ATTR_MAXATTR`):
    /// attributes above it are dropped without an error.
    pub(super) max_attr: Option<u32>,
}

impl FamilyInfo {
    /// Whether the kernel keeps `NBD_ATTR_BACKEND_IDENTIFIER` (Linux ≥
    /// 5.14): 4.19's nbd family stops at `NBD_ATTR_DEVICE_LIST` (9) and
    /// silently drops type 10, so CONNECT succeeds without it and no
    /// `/sys/block/nbdN/backend` appears. Unknown (no MAXATTR) counts as no.
    pub(super) fn has_backend_identifier(&self) -> bool {
        self.max_attr
            .is_some_and(|m| m >= u32::from(NBD_ATTR_BACKEND_IDENTIFIER))
    }
}

/// Reads the family id and multicast groups from a CTRL_CMD_GETFAMILY reply.
pub(super) fn decode_family(attrs: &[u8]) -> Result<Option<FamilyInfo>> {
    let mut id = None;
    let mut max_attr = None;
    let mut groups = Vec::new();
    for a in Attrs::new(attrs) {
        let a = a?;
        match a.kind {
            CTRL_ATTR_FAMILY_ID => id = Some(a.u16()?),
            CTRL_ATTR_MAXATTR => max_attr = Some(a.u32()?),
            CTRL_ATTR_MCAST_GROUPS => {
                for g in Attrs::new(a.payload) {
                    let (mut name, mut gid) = (None, None);
                    for f in Attrs::new(g?.payload) {
                        let f = f?;
                        match f.kind {
                            CTRL_ATTR_MCAST_GRP_NAME => {
                                let raw = f.payload.split(|b| *b == 0).next().unwrap_or_default();
                                name = Some(String::from_utf8_lossy(raw).into_owned());
                            }
                            CTRL_ATTR_MCAST_GRP_ID => gid = Some(f.u32()?),
                            _ => {}
                        }
                    }
                    if let (Some(n), Some(g)) = (name, gid) {
                        groups.push((n, g));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(id.map(|id| FamilyInfo {
        id,
        groups,
        max_attr,
    }))
}

/// Turns a multicast message of the nbd family into an event; anything else
/// (other families, unknown commands) is ignored.
pub(super) fn decode_event(family_id: u16, m: &NlMessage) -> Result<Option<NbdEvent>> {
    let NlBody::Genl(g) = &m.body else {
        return Ok(None);
    };
    if m.kind != family_id || g.cmd != NBD_CMD_LINK_DEAD {
        return Ok(None);
    }
    for a in Attrs::new(&g.attrs) {
        let a = a?;
        if a.kind == NBD_ATTR_INDEX {
            return Ok(Some(NbdEvent::LinkDead(NbdIndex(a.u32()?))));
        }
    }
    Err(NbdError::Malformed("LINK_DEAD without an index".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::tests::request;

    fn attr_bytes(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    /// The CONNECT request carries every attribute the kernel needs, in the
    /// kernel's layout, with the socket list nested twice.
    #[test]
    fn connect_request_encodes_exact_bytes() {
        let attrs = encode_connect(&request(), [7u32].into_iter());
        let msg = encode_request(0x1d, NBD_CMD_CONNECT, 1, 42, &attrs);

        let mut want_attrs = Vec::new();
        want_attrs.extend(attr_bytes(2, &(64u64 << 20).to_ne_bytes()));
        want_attrs.extend(attr_bytes(3, &4096u64.to_ne_bytes()));
        want_attrs.extend(attr_bytes(5, &5u64.to_ne_bytes()));
        want_attrs.extend(attr_bytes(4, &5u64.to_ne_bytes()));
        want_attrs.extend(attr_bytes(8, &1u64.to_ne_bytes()));
        want_attrs.extend(attr_bytes(10, b"srv-a/chunk-7\0"));
        let sock = attr_bytes(1 | NLA_F_NESTED, &attr_bytes(1, &7u32.to_ne_bytes()));
        want_attrs.extend(attr_bytes(7 | NLA_F_NESTED, &sock));

        let mut want = ((20 + want_attrs.len()) as u32).to_ne_bytes().to_vec();
        want.extend_from_slice(&0x1du16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes()); // REQUEST | ACK
        want.extend_from_slice(&42u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[1, 1, 0, 0]);
        want.extend(want_attrs);
        assert_eq!(msg, want);
        assert!(msg.len().is_multiple_of(4));
    }

    /// An explicit index is sent first; absent, the kernel chooses.
    #[test]
    fn connect_with_index_puts_index_attribute() {
        let mut r = request();
        r.index = Some(3);
        let a = encode_connect(&r, std::iter::empty());
        let first = Attrs::new(&a.buf).next().unwrap().unwrap();
        assert_eq!((first.kind, first.u32().unwrap()), (NBD_ATTR_INDEX, 3));
        let none = encode_connect(&request(), std::iter::empty());
        assert!(Attrs::new(&none.buf).all(|a| a.unwrap().kind != NBD_ATTR_INDEX));
    }

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    /// A STATUS reply followed by its ACK in one datagram decodes into the
    /// device list; the ACK and errors are recognised.
    #[test]
    fn status_reply_and_ack_decode() {
        let mut dev0 = attr_bytes(NBD_DEVICE_INDEX, &0u32.to_ne_bytes());
        dev0.extend(attr_bytes(NBD_DEVICE_CONNECTED, &[1]));
        let mut dev5 = attr_bytes(NBD_DEVICE_INDEX, &5u32.to_ne_bytes());
        dev5.extend(attr_bytes(NBD_DEVICE_CONNECTED, &[0]));
        let mut list = attr_bytes(NBD_DEVICE_ITEM, &dev0);
        list.extend(attr_bytes(NBD_DEVICE_ITEM, &dev5));
        let mut genl = vec![NBD_CMD_STATUS, 1, 0, 0];
        genl.extend(attr_bytes(NBD_ATTR_DEVICE_LIST, &list));
        let mut dgram = nlmsg(0x1d, 9, &genl);
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend(nlmsg(0x1d, 9, &[]));
        dgram.extend(nlmsg(NLMSG_ERROR, 9, &ack));

        let msgs = decode_messages(&dgram).unwrap();
        assert_eq!(msgs.len(), 2);
        let NlBody::Genl(g) = &msgs[0].body else {
            panic!("{msgs:?}")
        };
        assert_eq!(
            decode_status(&g.attrs).unwrap(),
            vec![
                NbdDeviceStatus {
                    index: NbdIndex(0),
                    connected: true
                },
                NbdDeviceStatus {
                    index: NbdIndex(5),
                    connected: false
                },
            ]
        );
        assert_eq!(msgs[1].body, NlBody::Ack);

        let err = nlmsg(NLMSG_ERROR, 3, &(-libc::EBUSY).to_ne_bytes());
        assert_eq!(
            decode_messages(&err).unwrap()[0].body,
            NlBody::Error(libc::EBUSY)
        );
    }

    /// The controller's family reply yields the id and the multicast group;
    /// a LINK_DEAD multicast decodes into an event, other traffic is ignored.
    #[test]
    fn family_reply_and_link_dead_event_decode() {
        let mut grp = attr_bytes(CTRL_ATTR_MCAST_GRP_ID, &9u32.to_ne_bytes());
        grp.extend(attr_bytes(CTRL_ATTR_MCAST_GRP_NAME, b"nbd_mc_group\0"));
        let groups = attr_bytes(CTRL_ATTR_MCAST_GROUPS | NLA_F_NESTED, &attr_bytes(1, &grp));
        let mut attrs = attr_bytes(CTRL_ATTR_FAMILY_NAME, b"nbd\0");
        attrs.extend(attr_bytes(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes()));
        attrs.extend(groups);
        let info = decode_family(&attrs).unwrap().unwrap();
        assert_eq!(
            info,
            FamilyInfo {
                id: 0x1d,
                groups: vec![("nbd_mc_group".into(), 9)],
                max_attr: None,
            }
        );
        assert!(!info.has_backend_identifier());
        assert_eq!(
            decode_family(&attr_bytes(CTRL_ATTR_FAMILY_NAME, b"nbd\0")).unwrap(),
            None
        );

        let mut genl = vec![NBD_CMD_LINK_DEAD, 1, 0, 0];
        genl.extend(attr_bytes(NBD_ATTR_INDEX, &3u32.to_ne_bytes()));
        let msgs = decode_messages(&nlmsg(0x1d, 0, &genl)).unwrap();
        assert_eq!(
            decode_event(0x1d, &msgs[0]).unwrap(),
            Some(NbdEvent::LinkDead(NbdIndex(3)))
        );
        assert_eq!(decode_event(0x1e, &msgs[0]).unwrap(), None);
        let no_index = decode_messages(&nlmsg(0x1d, 0, &[NBD_CMD_LINK_DEAD, 1, 0, 0])).unwrap();
        assert!(decode_event(0x1d, &no_index[0]).is_err());
    }

    /// CTRL_ATTR_MAXATTR tells a kernel that keeps backend identifiers
    /// (5.14+: the enum reaches 10) from 4.19 (it ends at DEVICE_LIST, 9).
    #[test]
    fn family_maxattr_tells_whether_backend_identifiers_exist() {
        let family = |max: u32| {
            let mut attrs = attr_bytes(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes());
            attrs.extend(attr_bytes(CTRL_ATTR_MAXATTR, &max.to_ne_bytes()));
            decode_family(&attrs).unwrap().unwrap()
        };
        assert_eq!(family(9).max_attr, Some(9));
        assert!(!family(9).has_backend_identifier());
        assert!(family(10).has_backend_identifier());
        assert!(family(11).has_backend_identifier());
        // A MAXATTR that is not a u32 is malformed, not a guess.
        let mut bad = attr_bytes(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes());
        bad.extend(attr_bytes(CTRL_ATTR_MAXATTR, &[1]));
        assert!(decode_family(&bad).is_err());
    }

    /// Truncated or lying lengths are errors, never panics or endless loops.
    #[test]
    fn malformed_input_is_an_error() {
        let mut m = nlmsg(0x1d, 1, &[5, 1, 0, 0]);
        m[0] = 200; // length beyond the buffer
        assert!(decode_messages(&m).is_err());
        assert!(decode_messages(&nlmsg(0x1d, 1, &[5])).is_err());
        let bad_attr = [8u8, 0, 9, 0, 1]; // claims 8 bytes, has 5
        assert!(decode_status(&bad_attr).is_err());
        let zero_len = [0u8, 0, 9, 0];
        assert!(decode_status(&zero_len).is_err());
        let item_without_index =
            attr_bytes(NBD_ATTR_DEVICE_LIST, &attr_bytes(NBD_DEVICE_ITEM, &[]));
        assert!(decode_status(&item_without_index).is_err());
        // Short fields are rejected rather than read past the end.
        let short = attr_bytes(
            NBD_ATTR_DEVICE_LIST,
            &attr_bytes(NBD_DEVICE_ITEM, &attr_bytes(1, &[1])),
        );
        assert!(decode_status(&short).is_err());
        // Every prefix of a valid message decodes or errors without panicking.
        let full = nlmsg(0x1d, 1, &[5, 1, 0, 0, 8, 0, 1, 0, 1, 0, 0, 0]);
        for i in 0..full.len() {
            let _ = decode_messages(&full[..i]);
        }
    }
}
