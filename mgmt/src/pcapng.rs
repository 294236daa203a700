//! A small pcapng writer and reader (the capture file format of
//! `sgswitch capture`; draft-ietf-opsawg-pcapng).
//!
//! Written: a Section Header Block (`shb_userappl`), one Interface Description
//! Block per port (link type Ethernet, the snaplen, `if_name`, `if_tsresol` =
//! microseconds), and one Enhanced Packet Block per frame with `epb_flags`
//! (direction: inbound = received from the port, outbound = sent to it) and,
//! for a dropped frame, `opt_comment` = `drop: REASON` (the counter name
//! `stats` prints). Little-endian (the byte-order magic says so). Any reader of
//! pcapng takes it: tcpdump/libpcap, Wireshark.
//!
//! Read: what this module writes, and any little-endian pcapng with those
//! block types (others are skipped), for `sgswitch capture -r` and the tests.

use std::fmt;

/// Block types.
pub const SHB: u32 = 0x0A0D_0D0A;
pub const IDB: u32 = 1;
pub const EPB: u32 = 6;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u16 = 1;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// `epb_flags` direction bits.
pub const FLAG_INBOUND: u32 = 0b01;
pub const FLAG_OUTBOUND: u32 = 0b10;

/// Appends one block to `out`: type, total length, `body`, options, total length.
fn block(out: &mut Vec<u8>, ty: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // patched below
    body(out);
    let total = (out.len() - start + 4) as u32;
    out[start + 4..start + 8].copy_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(value.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&value[..value.len().min(u16::MAX as usize)]);
    pad4(out);
}

fn end_of_options(out: &mut Vec<u8>) {
    option(out, OPT_END, &[]);
}

/// A Section Header Block naming the writing application.
pub fn write_section(out: &mut Vec<u8>, app: &str) {
    block(out, SHB, |b| {
        b.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(-1i64).to_le_bytes()); // section length unknown
        option(b, SHB_USERAPPL, app.as_bytes());
        end_of_options(b);
    });
}

/// An Interface Description Block: Ethernet, `snaplen`, timestamps in µs.
pub fn write_interface(out: &mut Vec<u8>, name: &str, snaplen: u32) {
    block(out, IDB, |b| {
        b.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&snaplen.to_le_bytes());
        option(b, IF_NAME, name.as_bytes());
        option(b, IF_TSRESOL, &[6]);
        end_of_options(b);
    });
}

/// One frame as written to or read from an Enhanced Packet Block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Index of its interface (0 = the first IDB of the section).
    pub iface: u32,
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    pub orig_len: u32,
    pub data: Vec<u8>,
    /// `epb_flags`, if present.
    pub flags: Option<u32>,
    pub comment: Option<String>,
}

/// An Enhanced Packet Block.
pub fn write_packet(
    out: &mut Vec<u8>,
    iface: u32,
    ts_us: u64,
    orig_len: u32,
    data: &[u8],
    flags: Option<u32>,
    comment: Option<&str>,
) {
    block(out, EPB, |b| {
        b.extend_from_slice(&iface.to_le_bytes());
        b.extend_from_slice(&((ts_us >> 32) as u32).to_le_bytes());
        b.extend_from_slice(&(ts_us as u32).to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        pad4(b);
        if let Some(f) = flags {
            option(b, EPB_FLAGS, &f.to_le_bytes());
        }
        if let Some(c) = comment {
            option(b, OPT_COMMENT, c.as_bytes());
        }
        if flags.is_some() || comment.is_some() {
            end_of_options(b);
        }
    });
}

/// A block read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Section {
        app: Option<String>,
    },
    Interface {
        linktype: u16,
        snaplen: u32,
        name: Option<String>,
        tsresol: Option<u8>,
    },
    Packet(Packet),
    /// A block of another type, skipped.
    Other(u32),
}

/// Why a pcapng stream could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a pcapng file this reader takes: {} at byte {}",
            self.what, self.offset
        )
    }
}

impl std::error::Error for ReadError {}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The options of a block body from `at`: `(code, value)` pairs.
fn options(b: &[u8], mut at: usize) -> Vec<(u16, &[u8])> {
    let mut v = Vec::new();
    while let (Some(code), Some(len)) = (u16_at(b, at), u16_at(b, at + 2)) {
        if code == OPT_END {
            break;
        }
        let Some(value) = b.get(at + 4..at + 4 + usize::from(len)) else {
            break;
        };
        v.push((code, value));
        at += 4 + usize::from(len).next_multiple_of(4);
    }
    v
}

fn text(opts: &[(u16, &[u8])], code: u16) -> Option<String> {
    opts.iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Every block of a little-endian pcapng stream, in order.
pub fn read(bytes: &[u8]) -> Result<Vec<Block>, ReadError> {
    let mut out = Vec::new();
    let mut at = 0;
    let err = |offset, what| ReadError { offset, what };
    while at < bytes.len() {
        let (Some(ty), Some(len)) = (u32_at(bytes, at), u32_at(bytes, at + 4)) else {
            return Err(err(at, "truncated block header"));
        };
        let len = len as usize;
        if len < 12 || !len.is_multiple_of(4) || at + len > bytes.len() {
            return Err(err(at, "bad block length"));
        }
        if u32_at(bytes, at + len - 4) != Some(len as u32) {
            return Err(err(at, "trailing block length differs"));
        }
        if out.is_empty() && ty != SHB {
            return Err(err(at, "no section header first"));
        }
        let body = &bytes[at + 8..at + len - 4];
        let short = || err(at, "block body too short");
        out.push(match ty {
            SHB => {
                if u32_at(body, 0) != Some(BYTE_ORDER_MAGIC) {
                    return Err(err(at, "not little-endian (byte-order magic)"));
                }
                Block::Section {
                    app: text(&options(body, 16), SHB_USERAPPL),
                }
            }
            IDB => {
                let linktype = u16_at(body, 0).ok_or_else(short)?;
                let snaplen = u32_at(body, 4).ok_or_else(short)?;
                let opts = options(body, 8);
                Block::Interface {
                    linktype,
                    snaplen,
                    name: text(&opts, IF_NAME),
                    tsresol: opts
                        .iter()
                        .find(|(c, _)| *c == IF_TSRESOL)
                        .and_then(|(_, v)| v.first().copied()),
                }
            }
            EPB => {
                let field = |i: usize| u32_at(body, 4 * i).ok_or_else(short);
                let (iface, hi, lo, cap, orig) =
                    (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
                let data = body.get(20..20 + cap as usize).ok_or_else(short)?;
                let opts = options(body, 20 + (cap as usize).next_multiple_of(4));
                Block::Packet(Packet {
                    iface,
                    ts_us: (u64::from(hi) << 32) | u64::from(lo),
                    orig_len: orig,
                    data: data.to_vec(),
                    flags: opts
                        .iter()
                        .find(|(c, _)| *c == EPB_FLAGS)
                        .and_then(|(_, v)| u32_at(v, 0)),
                    comment: text(&opts, OPT_COMMENT),
                })
            }
            other => Block::Other(other),
        });
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_layout_of_the_spec() {
        let mut v = Vec::new();
        write_section(&mut v, "sgswitch");
        // SHB: type, length 28 + option (4 + 8) + end (4) = 44, magic, 1.0, -1.
        assert_eq!(&v[0..4], &[0x0A, 0x0D, 0x0D, 0x0A]);
        assert_eq!(u32_at(&v, 4), Some(44));
        assert_eq!(&v[8..12], &[0x4D, 0x3C, 0x2B, 0x1A]);
        assert_eq!(&v[12..16], &[1, 0, 0, 0]);
        assert_eq!(&v[16..24], &[0xFF; 8]);
        assert_eq!(&v[24..28], &[4, 0, 8, 0]);
        assert_eq!(&v[28..36], b"sgswitch");
        assert_eq!(&v[36..40], &[0; 4], "end of options");
        assert_eq!(u32_at(&v, 40), Some(44), "trailing length");
        assert_eq!(v.len(), 44);

        let mut v = Vec::new();
        write_packet(
            &mut v,
            2,
            0x1_0000_0005,
            60,
            &[0xAB; 5],
            Some(FLAG_INBOUND),
            Some("drop: no_rule"),
        );
        // EPB: 8 + 20 + data padded to 8 + flags 8 + comment 4+16 + end 4 + 4.
        assert_eq!(u32_at(&v, 0), Some(6));
        assert_eq!(u32_at(&v, 4), Some(72));
        assert_eq!(u32_at(&v, 8), Some(2), "interface");
        assert_eq!(u32_at(&v, 12), Some(1), "timestamp high");
        assert_eq!(u32_at(&v, 16), Some(5), "timestamp low");
        assert_eq!(u32_at(&v, 20), Some(5), "captured length");
        assert_eq!(u32_at(&v, 24), Some(60), "original length");
        assert_eq!(&v[28..36], &[0xAB, 0xAB, 0xAB, 0xAB, 0xAB, 0, 0, 0]);
        assert_eq!(&v[36..44], &[2, 0, 4, 0, 1, 0, 0, 0], "epb_flags inbound");
        assert_eq!(&v[44..48], &[1, 0, 13, 0], "opt_comment");
        assert_eq!(&v[48..61], b"drop: no_rule");
        assert_eq!(&v[61..64], &[0, 0, 0], "padding");
        assert_eq!(&v[64..68], &[0; 4], "end of options");
        assert_eq!(u32_at(&v, 68), Some(72));
    }

    #[test]
    fn written_streams_read_back() {
        let mut v = Vec::new();
        write_section(&mut v, "sgswitch test");
        write_interface(&mut v, "sgt1234", 2048);
        write_interface(&mut v, "uplink", 2048);
        write_packet(
            &mut v,
            0,
            1_700_000_000_123_456,
            74,
            &[1; 74],
            Some(FLAG_OUTBOUND),
            None,
        );
        write_packet(
            &mut v,
            1,
            1_700_000_000_200_000,
            1514,
            &[2; 3],
            Some(FLAG_INBOUND),
            Some("drop: spoofed_ip"),
        );
        write_packet(&mut v, 1, 7, 4, &[3; 4], None, None);
        let blocks = read(&v).expect("reads");
        assert_eq!(
            blocks[0],
            Block::Section {
                app: Some("sgswitch test".into())
            }
        );
        assert_eq!(
            blocks[1],
            Block::Interface {
                linktype: 1,
                snaplen: 2048,
                name: Some("sgt1234".into()),
                tsresol: Some(6)
            }
        );
        assert_eq!(
            blocks[4],
            Block::Packet(Packet {
                iface: 1,
                ts_us: 1_700_000_000_200_000,
                orig_len: 1514,
                data: vec![2; 3],
                flags: Some(FLAG_INBOUND),
                comment: Some("drop: spoofed_ip".into()),
            })
        );
        let Block::Packet(p) = &blocks[3] else {
            panic!("{:?}", blocks[3])
        };
        assert_eq!(
            (p.ts_us, p.flags, p.comment.as_deref(), p.data.len()),
            (1_700_000_000_123_456, Some(2), None, 74)
        );
        let Block::Packet(p) = &blocks[5] else {
            panic!("{:?}", blocks[5])
        };
        assert_eq!((p.flags, &p.comment), (None, &None));
        // Cut anywhere inside a block: an error naming where, never a panic.
        for cut in [3, 20, 50, v.len() - 1] {
            assert!(read(&v[..cut]).is_err(), "cut at {cut}");
        }
        let shb_len = u32_at(&v, 4).unwrap() as usize;
        assert_eq!(
            read(&v[shb_len..]).unwrap_err().what,
            "no section header first"
        );
    }
}
