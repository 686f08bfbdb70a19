//! The tokens of JSON text, as Python's json module reads them, and the ways a text fails: what
//! `json.loads` refuses, nesting deeper than it reads, an integer longer than `int()` reads.

use crate::extract::value::{PyStr, Value};

/// The most digits `int()` reads from text (`sys.get_int_max_str_digits()`, 3.11 and later):
/// `json.loads` of a longer integer raises ValueError.
pub const MAX_INT_DIGITS: usize = 4300;

/// Why a document cannot be read, as Python's `json.loads` cannot either.
#[derive(Debug, PartialEq, Eq)]
pub enum TextError {
    /// Not JSON; the byte offset and what was wrong there.
    Invalid { at: usize, why: Fault },
    /// More containers nested in one another than `json.loads` reads (RecursionError).
    TooDeep { limit: usize },
    /// An integer longer than `int()` reads (ValueError).
    IntTooLong { digits: usize },
    /// Building the whole value (a JSONPath's document, a value nested deeper than `str()`
    /// goes) would take more memory than this process may have: `bytes`, at most.
    NoRoom { bytes: usize },
}

/// What is wrong where a text is not JSON. Small (with the offset, a TextError fits in two
/// registers): the scanner returns a Result from every token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    CommaOrEnd,
    Colon,
    Digit,
    FractionDigit,
    ExponentDigit,
    MemberName,
    Value,
    ExtraData,
    UnicodeEscape,
    Escape,
    StringEnd,
}

impl Fault {
    pub fn describe(self) -> &'static str {
        match self {
            Fault::CommaOrEnd => "expected ',' or the container's end",
            Fault::Colon => "expected ':'",
            Fault::Digit => "expected a digit",
            Fault::FractionDigit => "expected a digit after '.'",
            Fault::ExponentDigit => "expected a digit in the exponent",
            Fault::MemberName => "expected a member name",
            Fault::Value => "expected a value",
            Fault::ExtraData => "extra data after the document",
            Fault::UnicodeEscape => "invalid \\u escape",
            Fault::Escape => "invalid escape",
            Fault::StringEnd => "unterminated string or unescaped control character",
        }
    }
}

/// The tokens of JSON text, as Python's json module reads them.
pub(super) struct Lexer<'t> {
    pub(super) bytes: &'t [u8],
    pub(super) pos: usize,
}

impl<'t> Lexer<'t> {
    pub(super) fn new(text: &'t str) -> Lexer<'t> {
        Lexer {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    pub(super) fn invalid(&self, why: Fault) -> TextError {
        TextError::Invalid { at: self.pos, why }
    }

    #[inline(always)]
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline(always)]
    pub(super) fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    #[inline(always)]
    pub(super) fn eat(&mut self, b: u8) -> bool {
        let here = self.peek() == Some(b);
        self.pos += usize::from(here);
        here
    }

    /// JSON's whitespace (Python's json accepts exactly these four).
    #[inline(always)]
    pub(super) fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// A scalar other than a string's text, checked and skipped; a string is checked too.
    #[inline(always)]
    pub(super) fn scalar(&mut self) -> Result<(), TextError> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b't') => self.word(b"true"),
            Some(b'f') => self.word(b"false"),
            Some(b'n') => self.word(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.invalid(Fault::Value)),
        }
    }

    /// A scalar other than a string, as a value.
    pub(super) fn scalar_value(&mut self) -> Result<Value, TextError> {
        match self.peek() {
            Some(b't') => self.word(b"true").map(|()| Value::Bool(true)),
            Some(b'f') => self.word(b"false").map(|()| Value::Bool(false)),
            Some(b'n') => self.word(b"null").map(|()| Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                self.number()?;
                // ASCII bytes of a &str: always UTF-8.
                let text = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or("0");
                Ok(Value::Number(text.into()))
            }
            _ => Err(self.invalid(Fault::Value)),
        }
    }

    pub(super) fn word(&mut self, word: &[u8]) -> Result<(), TextError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.invalid(Fault::Value))
        }
    }

    /// A number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    #[inline(always)]
    pub(super) fn number(&mut self) -> Result<(), TextError> {
        self.eat(b'-');
        let mut digits = self.digits();
        if digits == 0 {
            return Err(self.invalid(Fault::Digit));
        }
        // A leading zero ends the integer part; what follows is then extra data.
        if self.bytes[self.pos - digits] == b'0' && digits > 1 {
            self.pos -= digits - 1;
            digits = 1;
        }
        let mut integer = true;
        if self.eat(b'.') {
            integer = false;
            if self.digits() == 0 {
                return Err(self.invalid(Fault::FractionDigit));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.invalid(Fault::ExponentDigit));
            }
        }
        if integer && digits > MAX_INT_DIGITS {
            return Err(TextError::IntTooLong { digits });
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// The end of the plain run of a string's text: the next quote, backslash or control
    /// character (which JSON forbids unescaped).
    #[inline(always)]
    pub(super) fn plain_run(&mut self) {
        const ONES: u64 = u64::MAX / 255;
        const HIGH_BITS: u64 = ONES << 7;
        let rest = &self.bytes[self.pos..];
        let mut at = 0;
        // Eight bytes at a time, by the has-zero-byte test: a byte below 0x20, a quote or a
        // backslash sets its high bit in `stop`. Only bytes above a stopping byte can be
        // flagged wrongly, so the lowest flag is the first stop.
        while let Some(chunk) = rest.get(at..at + 8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            let w = u64::from_le_bytes(word);
            let quote = w ^ (ONES * u64::from(b'"'));
            let backslash = w ^ (ONES * u64::from(b'\\'));
            let stop = ((w.wrapping_sub(ONES * 0x20) & !w)
                | (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash))
                & HIGH_BITS;
            if stop != 0 {
                self.pos += at + (stop.trailing_zeros() / 8) as usize;
                return;
            }
            at += 8;
        }
        while let Some(&b) = rest.get(at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            at += 1;
        }
        self.pos += at;
    }

    /// Checks and skips a string.
    #[inline(always)]
    pub(super) fn skip_string(&mut self) -> Result<(), TextError> {
        self.pos += 1;
        loop {
            self.plain_run();
            match self.next_byte() {
                Some(b'"') => return Ok(()),
                Some(b'\\') => {
                    self.escape(|_| {})?;
                }
                _ => return Err(self.invalid(Fault::StringEnd)),
            }
        }
    }

    /// A string's value.
    pub(super) fn string(&mut self) -> Result<PyStr, TextError> {
        self.pos += 1;
        let mut out = PyStr::with_capacity(0);
        loop {
            let start = self.pos;
            self.plain_run();
            // The run lies between ASCII bytes of a &str: whole characters.
            out.push_str(std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or(""));
            match self.next_byte() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => {
                    self.escape(|code| out.push_code_point(code))?;
                }
                _ => return Err(self.invalid(Fault::StringEnd)),
            }
        }
    }

    /// An object member's name (the lexer is at its quote), then the colon.
    pub(super) fn member_name(&mut self) -> Result<PyStr, TextError> {
        if self.peek() != Some(b'"') {
            return Err(self.invalid(Fault::MemberName));
        }
        let name = self.string()?;
        self.colon()?;
        Ok(name)
    }

    #[inline(always)]
    pub(super) fn colon(&mut self) -> Result<(), TextError> {
        self.whitespace();
        if self.eat(b':') {
            Ok(())
        } else {
            Err(self.invalid(Fault::Colon))
        }
    }

    /// An escape after its backslash; `push` gets the code point. A high surrogate followed by
    /// the escape of a low one is one character; any other surrogate stays alone, as in Python.
    pub(super) fn escape(&mut self, mut push: impl FnMut(u32)) -> Result<(), TextError> {
        let code = match self.next_byte() {
            Some(b'"') => 0x22,
            Some(b'\\') => 0x5c,
            Some(b'/') => 0x2f,
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => 0x0a,
            Some(b'r') => 0x0d,
            Some(b't') => 0x09,
            Some(b'u') => {
                let code = self.hex4()?;
                match code {
                    0xd800..=0xdbff => {
                        let low = self.bytes[self.pos..]
                            .starts_with(b"\\u")
                            .then(|| hex4_at(self.bytes, self.pos + 2))
                            .flatten()
                            .filter(|low| (0xdc00..=0xdfff).contains(low));
                        match low {
                            Some(low) => {
                                self.pos += 6;
                                0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00)
                            }
                            None => code,
                        }
                    }
                    _ => code,
                }
            }
            _ => return Err(self.invalid(Fault::Escape)),
        };
        push(code);
        Ok(())
    }

    pub(super) fn hex4(&mut self) -> Result<u32, TextError> {
        let code =
            hex4_at(self.bytes, self.pos).ok_or_else(|| self.invalid(Fault::UnicodeEscape))?;
        self.pos += 4;
        Ok(code)
    }
}

/// The four hexadecimal digits at `at`, if they are.
pub(super) fn hex4_at(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    digits.iter().try_fold(0, |code, &b| {
        let digit = char::from(b).to_digit(16)?;
        Some(code << 4 | digit)
    })
}
