//! Tokens of the textual form, each with its line and column.

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A bare word: mnemonics, dtypes, symbols, attribute names, `true`.
    Ident(String),
    /// `%name`
    Value(String),
    /// `@name`
    Global(String),
    Str(String),
    /// A number as written; the parser decides integer or float.
    Number(String),
    Punct(char),
    Eof,
}

impl Tok {
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Value(s) => format!("`%{s}`"),
            Tok::Global(s) => format!("`@{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Number(s) => format!("number `{s}`"),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Eof => "end of input".to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spanned {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// Splits text into tokens; on failure returns (line, column, message).
pub fn lex(text: &str) -> Result<Vec<Spanned>, (usize, usize, String)> {
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut col) = (1usize, 1usize);
    while let Some(&c) = chars.peek() {
        let (l, cl) = (line, col);
        let mut bump = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let c = chars.next();
            if c == Some('\n') {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
            c
        };
        if c.is_whitespace() {
            bump(&mut chars);
            continue;
        }
        if c == '#' {
            while chars.peek().is_some_and(|&c| c != '\n') {
                bump(&mut chars);
            }
            continue;
        }
        let tok = if c == '%' || c == '@' {
            bump(&mut chars);
            let mut name = String::new();
            while chars.peek().is_some_and(|&c| is_word(c)) {
                name.extend(bump(&mut chars));
            }
            if name.is_empty() {
                return Err((l, cl, format!("expected a name after `{c}`")));
            }
            if c == '%' {
                Tok::Value(name)
            } else {
                Tok::Global(name)
            }
        } else if c == '"' {
            bump(&mut chars);
            let mut s = String::new();
            loop {
                match bump(&mut chars) {
                    None => return Err((l, cl, "unterminated string".to_string())),
                    Some('"') => break,
                    Some('\\') => match bump(&mut chars) {
                        Some('"') => s.push('"'),
                        Some('\\') => s.push('\\'),
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('u') => {
                            let mut hex = String::new();
                            if bump(&mut chars) != Some('{') {
                                return Err((l, cl, "expected `{` after `\\u`".to_string()));
                            }
                            loop {
                                match bump(&mut chars) {
                                    Some('}') => break,
                                    Some(h) if h.is_ascii_hexdigit() && hex.len() < 6 => {
                                        hex.push(h)
                                    }
                                    _ => return Err((l, cl, "bad `\\u{..}` escape".to_string())),
                                }
                            }
                            let ch = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or((l, cl, format!("bad character code \\u{{{hex}}}")))?;
                            s.push(ch);
                        }
                        other => {
                            return Err((
                                l,
                                cl,
                                format!("unknown escape `\\{}`", other.unwrap_or(' ')),
                            ))
                        }
                    },
                    Some(ch) => s.push(ch),
                }
            }
            Tok::Str(s)
        } else if c.is_ascii_digit() || c == '-' {
            let mut s = String::new();
            s.extend(bump(&mut chars));
            while let Some(&d) = chars.peek() {
                let exponent_sign = (d == '-' || d == '+') && s.ends_with(['e', 'E']);
                if d.is_ascii_alphanumeric() || d == '.' || exponent_sign {
                    s.extend(bump(&mut chars));
                } else {
                    break;
                }
            }
            Tok::Number(s)
        } else if is_word(c) {
            let mut s = String::new();
            while chars.peek().is_some_and(|&c| is_word(c)) {
                s.extend(bump(&mut chars));
            }
            Tok::Ident(s)
        } else if "{}[](),=:".contains(c) {
            bump(&mut chars);
            Tok::Punct(c)
        } else {
            return Err((l, cl, format!("unexpected character `{c}`")));
        };
        toks.push(Spanned {
            tok,
            line: l,
            col: cl,
        });
    }
    toks.push(Spanned {
        tok: Tok::Eof,
        line,
        col,
    });
    Ok(toks)
}
