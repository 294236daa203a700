//! A byte reader for structured fuzz inputs.
//!
//! Contract: every read succeeds. Past the end of the input a read yields zeros
//! (and `take` an empty slice), so any byte string decodes to *some* sequence of
//! operations and the fuzzer never wastes an input on a decoding error. The
//! matching writer ([`Writer`]) lets the seed generator build inputs that decode
//! to chosen operations.

/// Reads little-endian fields from the front of a byte string.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (u8) string, lossily decoded as UTF-8.
    pub fn string(&mut self) -> String {
        let n = usize::from(self.u8());
        String::from_utf8_lossy(self.take(n)).into_owned()
    }

    /// One of `choices` picked by a byte, or (when the byte says so) a
    /// fuzzer-made string: dictionaries steer the fuzzer towards valid values
    /// while every value stays reachable.
    pub fn pick_or_string(&mut self, choices: &[&str]) -> String {
        let b = self.u8();
        if b >= 0x80 || choices.is_empty() {
            self.string()
        } else {
            choices[usize::from(b) % choices.len()].to_owned()
        }
    }
}

/// Writes fields the way [`Reader`] reads them (seed corpus generation).
#[derive(Clone, Debug, Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    /// A length-prefixed string (at most 255 bytes), read by [`Reader::string`].
    pub fn string(&mut self, s: &str) -> &mut Self {
        let b = &s.as_bytes()[..s.len().min(255)];
        self.u8(b.len() as u8).bytes(b)
    }

    /// A value for [`Reader::pick_or_string`]: the index of `s` in `choices`, or
    /// the escape byte and the string itself.
    pub fn pick_or_string(&mut self, choices: &[&str], s: &str) -> &mut Self {
        match choices.iter().position(|c| *c == s) {
            Some(i) if i < 0x80 => self.u8(i as u8),
            _ => self.u8(0x80).string(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero_and_writer_round_trips() {
        let mut w = Writer::default();
        w.u8(7)
            .u16(0xbeef)
            .string("web")
            .pick_or_string(&["a", "b"], "b");
        w.pick_or_string(&["a", "b"], "zz");
        let mut r = Reader::new(&w.bytes);
        assert_eq!(r.u8(), 7);
        assert_eq!(r.u16(), 0xbeef);
        assert_eq!(r.string(), "web");
        assert_eq!(r.pick_or_string(&["a", "b"]), "b");
        assert_eq!(r.pick_or_string(&["a", "b"]), "zz");
        assert!(r.is_empty());
        assert_eq!((r.u8(), r.u16(), r.take(5).len()), (0, 0, 0));
    }
}
