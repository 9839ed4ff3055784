//! Splits a byte stream into bounded lines. A partial line is a normal state: it stays in
//! the caller's buffer until its `\n` arrives.

/// A line (or the unfinished tail of one) exceeded the limit; the contract closes the
/// connection with `too_large`.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLong {
    pub limit: usize,
}

/// Iterates the complete, non-blank lines in `buf`, `\n` and a `\r` before it stripped.
/// After iteration, [`Lines::consumed`] is how many leading bytes may be dropped.
pub struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
    max_line_bytes: usize,
}

impl<'a> Lines<'a> {
    pub fn new(buf: &'a [u8], max_line_bytes: usize) -> Self {
        Lines {
            buf,
            pos: 0,
            max_line_bytes,
        }
    }

    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], TooLong>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
                // An unfinished tail one byte over the limit may still be a line at the limit
                // whose `\r\n` was split by a read: only its `\n` tells. (Refusing it here
                // made the same bytes mean different things depending on read boundaries.)
                let may_be_crlf =
                    rest.len() == self.max_line_bytes + 1 && rest.last() == Some(&b'\r');
                if rest.len() > self.max_line_bytes && !may_be_crlf {
                    return Some(Err(TooLong {
                        limit: self.max_line_bytes,
                    }));
                }
                return None;
            };
            let mut line = &rest[..newline];
            self.pos += newline + 1;
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            if line.len() > self.max_line_bytes {
                return Some(Err(TooLong {
                    limit: self.max_line_bytes,
                }));
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Some(Ok(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_strips_and_skips_blank_lines() {
        let mut lines = Lines::new(b"a\r\n\n \r\nbc\npartial", 10);
        assert_eq!(lines.next(), Some(Ok(&b"a"[..])));
        assert_eq!(lines.next(), Some(Ok(&b"bc"[..])));
        assert_eq!(lines.next(), None);
        assert_eq!(lines.consumed(), 10);
    }

    #[test]
    fn an_overlong_line_is_refused_before_its_newline_arrives() {
        let mut lines = Lines::new(b"12345678901", 10);
        assert_eq!(lines.next(), Some(Err(TooLong { limit: 10 })));
        let mut lines = Lines::new(b"1234567890\n", 10);
        assert_eq!(lines.next(), Some(Ok(&b"1234567890"[..])));
    }

    #[test]
    fn a_line_at_the_limit_whose_crlf_is_split_by_a_read_is_not_too_long() {
        // Found by the client_frame fuzzer: 10 bytes + "\r" arrived, then "\n".
        let mut lines = Lines::new(b"1234567890\r", 10);
        assert_eq!(lines.next(), None);
        let mut lines = Lines::new(b"1234567890\r\n", 10);
        assert_eq!(lines.next(), Some(Ok(&b"1234567890"[..])));
        // One byte more cannot become a line within the limit.
        let mut lines = Lines::new(b"1234567890\r\r", 10);
        assert_eq!(lines.next(), Some(Err(TooLong { limit: 10 })));
        let mut lines = Lines::new(b"12345678901", 10);
        assert_eq!(lines.next(), Some(Err(TooLong { limit: 10 })));
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_lines(text in "[a-c\n]{0,60}", cut in 0usize..60) {
            let all: Vec<Vec<u8>> = Lines::new(text.as_bytes(), 100).map(|l| l.unwrap().to_vec()).collect();
            let cut = cut.min(text.len());
            let mut buf = text.as_bytes()[..cut].to_vec();
            let mut got = Vec::new();
            let mut lines = Lines::new(&buf, 100);
            for l in lines.by_ref() { got.push(l.unwrap().to_vec()); }
            let used = lines.consumed();
            buf.drain(..used);
            buf.extend_from_slice(&text.as_bytes()[cut..]);
            for l in Lines::new(&buf, 100) { got.push(l.unwrap().to_vec()); }
            prop_assert_eq!(all, got);
        }
    }
}
