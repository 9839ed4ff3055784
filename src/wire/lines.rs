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
                if rest.len() > self.max_line_bytes {
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
