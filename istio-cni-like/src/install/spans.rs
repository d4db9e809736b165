//! Byte spans of JSON values, so the installer can splice our plugin into a conflist without
//! re-serialising it: the primary CNI's file keeps its formatting, key order and any numbers
//! serde_json would reformat, and uninstall restores it byte for byte.
//!
//! Only called on text serde_json has already accepted, so the scanner can assume valid JSON;
//! it still returns errors rather than panicking if that assumption is ever broken. Scanning is
//! iterative (depth counter), so deep nesting cannot overflow the stack.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON scan failed at byte {at}: {what}")]
pub(crate) struct ScanError {
    at: usize,
    what: &'static str,
}

/// An object member: the raw key's span (quotes included) and the value's span.
pub(crate) type Member = (Range<usize>, Range<usize>);

struct Scanner<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn err(&self, what: &'static str) -> ScanError {
        ScanError { at: self.pos, what }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), ScanError> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// Skips a string starting at the opening quote.
    fn skip_string(&mut self) -> Result<(), ScanError> {
        self.pos += 1;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'"' => return Ok(()),
                b'\\' => self.pos += 1,
                _ => {}
            }
        }
        Err(self.err("unterminated string"))
    }

    /// Skips one value (after whitespace) and returns its span.
    fn value(&mut self) -> Result<Range<usize>, ScanError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            None => return Err(self.err("expected a value")),
            Some(b'"') => self.skip_string()?,
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated object or array")),
                        Some(b'"') => self.skip_string()?,
                        Some(b'{' | b'[') => {
                            depth += 1;
                            self.pos += 1;
                        }
                        Some(b'}' | b']') => {
                            depth -= 1;
                            self.pos += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Some(_) => self.pos += 1,
                    }
                }
            }
            Some(_) => {
                while let Some(b) = self.peek() {
                    if b.is_ascii_whitespace() || matches!(b, b',' | b'}' | b']') {
                        break;
                    }
                    self.pos += 1;
                }
            }
        }
        if self.pos == start {
            return Err(self.err("expected a value"));
        }
        Ok(start..self.pos)
    }

    /// After an element: `,` (more follow, returns true) or `close` (returns false).
    fn separator(&mut self, close: u8) -> Result<bool, ScanError> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.err("expected , or closing bracket")),
        }
    }
}

/// Members of the top-level object of `text`: (raw key span including quotes, value span).
pub(crate) fn object_members(text: &str) -> Result<Vec<Member>, ScanError> {
    let mut sc = Scanner {
        s: text.as_bytes(),
        pos: 0,
    };
    sc.expect(b'{', "expected {")?;
    let mut members = Vec::new();
    sc.skip_ws();
    if sc.peek() == Some(b'}') {
        return Ok(members);
    }
    loop {
        sc.skip_ws();
        if sc.peek() != Some(b'"') {
            return Err(sc.err("expected a key"));
        }
        let key = sc.value()?;
        sc.expect(b':', "expected :")?;
        let value = sc.value()?;
        members.push((key, value));
        if !sc.separator(b'}')? {
            return Ok(members);
        }
    }
}

/// Spans of the elements of the array at `array` (the span of the whole array, brackets included).
pub(crate) fn array_elements(
    text: &str,
    array: Range<usize>,
) -> Result<Vec<Range<usize>>, ScanError> {
    let mut sc = Scanner {
        s: text.as_bytes(),
        pos: array.start,
    };
    sc.expect(b'[', "expected [")?;
    let mut elements = Vec::new();
    sc.skip_ws();
    if sc.peek() == Some(b']') {
        return Ok(elements);
    }
    loop {
        elements.push(sc.value()?);
        if !sc.separator(b']')? {
            return Ok(elements);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_elements_of_nested_json() {
        let text = r#" { "a" : [1, {"x":"]}"}, "s\"q"] , "b":{"c":[[]]}, "n": -1.5e3 } "#;
        let members = object_members(text).unwrap();
        let keys: Vec<&str> = members.iter().map(|(k, _)| &text[k.clone()]).collect();
        assert_eq!(keys, [r#""a""#, r#""b""#, r#""n""#]);
        assert_eq!(&text[members[2].1.clone()], "-1.5e3");
        let elements = array_elements(text, members[0].1.clone()).unwrap();
        let got: Vec<&str> = elements.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(got, ["1", r#"{"x":"]}"}"#, r#""s\"q""#]);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for text in [r#"{"a": [1, 2"#, r#"{"a": "x"#, "{", "", r#"{"a" 1}"#] {
            assert!(object_members(text).is_err(), "{text:?}");
        }
    }
}
