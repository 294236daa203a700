//! Ids and MACs: `sg-`, `i-` and `r-` ids from a sequence number through a
//! bijective 32-bit mixer (deterministic, unique for 2^32 numbers,
//! random-looking; the group mixer is inverted so a reload can continue the
//! sequence), and an instance's MAC derived from its id. Pure functions.

use crate::Mac;

/// A bijection on `u32` (Wellons' "lowbias32"): distinct inputs give distinct,
/// random-looking outputs.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The inverse of [`mix32`].
fn unmix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x4302_1123); // inverse of 0x846ca68b mod 2^32
    x ^= (x >> 15) ^ (x >> 30);
    x = x.wrapping_mul(0x1d69_e2a5); // inverse of 0x7feb352d mod 2^32
    x ^= x >> 16;
    x
}

// Per-kind salts, so that group, instance and reservation number n do not share
// their hex digits.
const SALT_GROUP: u32 = 0x5ec0_0000;
const SALT_INSTANCE: u32 = 0x1275_7a11;
const SALT_RESERVATION: u32 = 0x7e5e_7e00;

fn seq_id(prefix: &str, salt: u32, seq: u64) -> String {
    // Folding the high half in keeps the id a function of the whole sequence.
    let folded = (seq as u32) ^ ((seq >> 32) as u32).rotate_left(7);
    format!("{prefix}{:08x}", mix32(folded ^ salt))
}

/// The `seq`-th group id: `sg-` + 8 lowercase hex digits, unique for 2^32 numbers.
pub fn new_group_id(seq: u64) -> String {
    seq_id("sg-", SALT_GROUP, seq)
}

/// The sequence number (below 2^32) that [`new_group_id`] turned into `id`, if
/// `id` is a well-formed group id.
pub fn group_id_seq(id: &str) -> Option<u64> {
    if !is_id("sg-", id) {
        return None;
    }
    let v = u32::from_str_radix(&id[3..], 16).ok()?;
    Some(u64::from(unmix32(v) ^ SALT_GROUP))
}

/// The `seq`-th instance id: `i-` + 8 lowercase hex digits, unique for 2^32 numbers.
pub fn new_instance_id(seq: u64) -> String {
    seq_id("i-", SALT_INSTANCE, seq)
}

/// The `seq`-th reservation id: `r-` + 8 lowercase hex digits.
pub fn new_reservation_id(seq: u64) -> String {
    seq_id("r-", SALT_RESERVATION, seq)
}

/// Whether `id` is `prefix` followed by exactly 8 lowercase hex digits.
pub fn is_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|h| {
        h.len() == 8
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The MAC of an instance: locally administered unicast `02:` followed by the
/// last 10 hex digits of the id (`i-0123abcd` → `02:00:01:23:ab:cd`). An id that
/// is not `i-` + hex (e.g. one chosen for an attached interface) is hashed instead
/// (FNV-1a), so every id gets a stable MAC.
pub fn instance_mac(id: &str) -> Mac {
    let hex = id.strip_prefix("i-").unwrap_or("");
    let mut v: u64 = 0;
    if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        for b in hex.bytes() {
            let d = (b as char).to_digit(16).unwrap_or(0);
            v = (v << 4) | u64::from(d);
        }
    } else {
        v = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            v ^= u64::from(b);
            v = v.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let b = v.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}
