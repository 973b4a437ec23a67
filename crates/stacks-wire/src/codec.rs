//! A bounded reader over untrusted bytes.
//!
//! Every length prefix is checked against the bytes that remain before
//! anything is allocated, so a lying prefix runs out of input, never memory.

use crate::Error;

/// Reads big-endian integers and byte strings from a slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(Error::UnexpectedEnd {
                needed: n,
                remaining: self.remaining(),
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u128(&mut self) -> Result<u128, Error> {
        Ok(u128::from_be_bytes(self.array()?))
    }

    /// Reads a u32 count of items that each take at least `min_item_len`
    /// bytes, refusing counts the remaining input cannot hold.
    pub(crate) fn count(&mut self, min_item_len: usize) -> Result<usize, Error> {
        let n = usize::try_from(self.u32()?).map_err(|_| Error::LengthTooLarge)?;
        if n.saturating_mul(min_item_len.max(1)) > self.remaining() {
            return Err(Error::UnexpectedEnd {
                needed: n.saturating_mul(min_item_len.max(1)),
                remaining: self.remaining(),
            });
        }
        Ok(n)
    }

    /// Reads a byte string with a u32 length prefix.
    pub(crate) fn bytes_u32(&mut self) -> Result<&'a [u8], Error> {
        let n = self.count(1)?;
        self.take(n)
    }

    /// Reads a byte string with a u8 length prefix.
    pub(crate) fn bytes_u8(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(Error::TrailingBytes(self.remaining()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lying_length_prefix_fails_without_allocating() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert!(matches!(r.bytes_u32(), Err(Error::UnexpectedEnd { .. })));
    }

    #[test]
    fn finish_reports_leftovers() {
        let mut r = Reader::new(&[1, 2, 3]);
        r.u8().unwrap();
        assert_eq!(r.finish(), Err(Error::TrailingBytes(2)));
    }
}
