//! A small SQL lexer: enough to find the table names of a logged statement
//! without being fooled by comments, string literals or quoted names.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    /// An unquoted word: keyword, identifier or number.
    Word(String),
    /// A `backticked` or "double-quoted" identifier (ANSI_QUOTES); a
    /// double-quoted string never stands where a table name is looked for.
    Quoted(String),
    /// A 'string' literal: its text never names a table.
    Str,
    Punct(char),
}

/// SQL tokens, without blanks and comments. The text of executable comments
/// (`/*!40101 … */`, `/*M!100100 … */`) is read as statement text, as the
/// server does.
pub(super) struct Lexer<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Lexer { s, i: 0 }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        let b = self.s.as_bytes();
        loop {
            let rest = &self.s[self.i..];
            let c = rest.chars().next()?;
            if c.is_whitespace() {
                self.i += c.len_utf8();
            } else if rest.starts_with("/*!") || rest.starts_with("/*M!") {
                let body = if rest.starts_with("/*!") { 3 } else { 4 };
                self.i += body;
                while self.i < b.len() && b[self.i].is_ascii_digit() {
                    self.i += 1;
                }
            } else if rest.starts_with("*/") {
                // The end of an executable comment.
                self.i += 2;
            } else if let Some(after) = rest.strip_prefix("/*") {
                self.i += 2 + after.find("*/").map_or(after.len(), |e| e + 2);
            } else if c == '#'
                || (rest.starts_with("--")
                    && rest[2..].chars().next().is_none_or(char::is_whitespace))
            {
                self.i += rest.find('\n').unwrap_or(rest.len());
            } else {
                break;
            }
        }
        let rest = &self.s[self.i..];
        let c = rest.chars().next()?;
        if matches!(c, '\'' | '"' | '`') {
            let (text, len) = quoted(rest, c);
            self.i += len;
            return Some(if c == '\'' {
                Tok::Str
            } else {
                Tok::Quoted(text)
            });
        }
        let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii();
        if word_char(c) {
            let len = rest.find(|c: char| !word_char(c)).unwrap_or(rest.len());
            self.i += len;
            return Some(Tok::Word(rest[..len].to_string()));
        }
        self.i += c.len_utf8();
        Some(Tok::Punct(c))
    }
}

/// The text of the quoted token at the start of `s` (quote `q`, doubled
/// quotes and backslash escapes inside) and its length in bytes.
fn quoted(s: &str, q: char) -> (String, usize) {
    let mut text = String::new();
    let mut it = s.char_indices().skip(1).peekable();
    while let Some((i, c)) = it.next() {
        if c == q {
            if it.peek().is_some_and(|&(_, n)| n == q) {
                it.next();
                text.push(q);
                continue;
            }
            return (text, i + c.len_utf8());
        }
        if c == '\\' && q != '`' {
            if let Some((_, n)) = it.next() {
                text.push(n);
            }
            continue;
        }
        text.push(c);
    }
    (text, s.len())
}
