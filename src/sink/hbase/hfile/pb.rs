//! The few encodings HFile's metadata needs, by hand: protobuf varints and
//! fields (FileInfo, the trailer, the time range) and Hadoop's `VInt` (the
//! key lengths of the block index). Four small messages do not justify a
//! protobuf code generator.

/// Protobuf's base-128 varint.
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field (wire type 0).
pub fn field_u64(out: &mut Vec<u8>, field: u32, v: u64) {
    varint(out, u64::from(field) << 3);
    varint(out, v);
}

/// A length-delimited field (wire type 2): bytes, strings, messages.
pub fn field_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// `writeDelimitedTo`: the message's length as a varint, then the message.
pub fn delimited(out: &mut Vec<u8>, msg: &[u8]) {
    varint(out, msg.len() as u64);
    out.extend_from_slice(msg);
}

/// The magic HBase puts before a protobuf-encoded value.
pub const PB_MAGIC: &[u8; 4] = b"PBUF";

/// Hadoop's `WritableUtils.writeVLong` (zero-compressed, big-endian).
pub fn hadoop_vlong(out: &mut Vec<u8>, v: i64) {
    if (-112..=127).contains(&v) {
        out.push(v as u8);
        return;
    }
    let (mut len, x) = if v < 0 { (-120i32, !v) } else { (-112i32, v) };
    let mut tmp = x;
    while tmp != 0 {
        tmp >>= 8;
        len -= 1;
    }
    out.push(len as i8 as u8);
    let n = if len < -120 {
        -(len + 120)
    } else {
        -(len + 112)
    };
    for i in (0..n).rev() {
        out.push((x >> (i * 8)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_protobuf() {
        let mut v = Vec::new();
        varint(&mut v, 1);
        varint(&mut v, 300);
        varint(&mut v, u64::MAX);
        assert_eq!(
            v,
            [
                &[1u8][..],
                &[0xac, 0x02],
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
            ]
            .concat()
        );
        let mut f = Vec::new();
        field_u64(&mut f, 12, 2);
        field_bytes(&mut f, 1, b"ab");
        assert_eq!(f, [0x60, 0x02, 0x0a, 0x02, b'a', b'b']);
    }

    #[test]
    fn hadoop_vlongs_match_writable_utils() {
        let enc = |v| {
            let mut o = Vec::new();
            hadoop_vlong(&mut o, v);
            o
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [127]);
        assert_eq!(enc(-112), [0x90]);
        // 200: one byte follows, marked -113.
        assert_eq!(enc(200), [0x8f, 200]);
        assert_eq!(enc(65_536), [0x8d, 0x01, 0x00, 0x00]);
        // -113 ^ -1 = 112: one byte, marked -121.
        assert_eq!(enc(-113), [0x87, 112]);
    }
}
