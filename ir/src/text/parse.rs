use std::collections::HashMap;

use super::lexer::{lex, Spanned, Tok};
use crate::graph::{Graph, Node, ValueId};
use crate::op::{Attr, AttrMap, Op};
use crate::types::{DType, Dim, Shape, TensorType};

/// A syntax error at a place in a file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses the textual form. `file` names the source in error messages.
/// Value names may be any `%word`; they are renumbered by position. The
/// result is syntactically valid; run the verifier to check types.
pub fn parse(text: &str, file: &str) -> Result<Graph, ParseError> {
    let toks = lex(text).map_err(|(line, col, message)| ParseError {
        file: file.to_string(),
        line,
        col,
        message,
    })?;
    let mut p = Parser {
        toks,
        pos: 0,
        file,
        values: HashMap::new(),
    };
    p.graph()
}

struct Parser<'a> {
    toks: Vec<Spanned>,
    pos: usize,
    file: &'a str,
    values: HashMap<String, ValueId>,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].tok
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].tok.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn error_here<T>(&self, message: String) -> Result<T, ParseError> {
        let s = &self.toks[self.pos];
        Err(ParseError {
            file: self.file.to_string(),
            line: s.line,
            col: s.col,
            message,
        })
    }

    fn expected<T>(&self, what: &str) -> Result<T, ParseError> {
        self.error_here(format!("expected {what}, found {}", self.peek().describe()))
    }

    fn punct(&mut self, c: char) -> Result<(), ParseError> {
        if *self.peek() == Tok::Punct(c) {
            self.next();
            Ok(())
        } else {
            self.expected(&format!("`{c}`"))
        }
    }

    fn eat_punct(&mut self, c: char) -> bool {
        let hit = *self.peek() == Tok::Punct(c);
        if hit {
            self.next();
        }
        hit
    }

    fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        match self.peek() {
            Tok::Ident(s) if s == kw => {
                self.next();
                Ok(())
            }
            _ => self.expected(&format!("`{kw}`")),
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::Ident(s) => {
                self.next();
                Ok(s)
            }
            _ => self.expected(what),
        }
    }

    fn graph(&mut self) -> Result<Graph, ParseError> {
        self.keyword("graph")?;
        let Tok::Global(name) = self.peek().clone() else {
            return self.expected("a graph name like `@model`");
        };
        self.next();
        self.punct('{')?;
        let mut graph = Graph {
            name,
            ..Graph::default()
        };
        loop {
            match self.peek().clone() {
                Tok::Ident(kw) if kw == "meta" => {
                    self.next();
                    let key = self.ident("a meta key")?;
                    self.punct('=')?;
                    let Tok::Str(value) = self.peek().clone() else {
                        return self.expected("a quoted meta value");
                    };
                    self.next();
                    if graph.meta.insert(key.clone(), value).is_some() {
                        return self.error_here(format!("meta `{key}` is given twice"));
                    }
                }
                Tok::Value(_) => {
                    let node = self.node()?;
                    graph.nodes.push(node);
                }
                Tok::Ident(kw) if kw == "return" => {
                    self.next();
                    loop {
                        graph.outputs.push(self.value_ref()?);
                        if !self.eat_punct(',') {
                            break;
                        }
                    }
                    self.punct('}')?;
                    if *self.peek() != Tok::Eof {
                        return self.expected("end of input after the graph");
                    }
                    return Ok(graph);
                }
                _ => return self.expected("`meta`, a value definition `%name = ...` or `return`"),
            }
        }
    }

    fn value_ref(&mut self) -> Result<ValueId, ParseError> {
        match self.peek().clone() {
            Tok::Value(name) => match self.values.get(&name) {
                Some(&id) => {
                    self.next();
                    Ok(id)
                }
                None => self.error_here(format!("value %{name} is used before it is defined")),
            },
            _ => self.expected("a value like `%3`"),
        }
    }

    fn node(&mut self) -> Result<Node, ParseError> {
        let Tok::Value(name) = self.next() else {
            unreachable!("node() is called on a value token")
        };
        if self.values.contains_key(&name) {
            self.pos -= 1;
            return self.error_here(format!("value %{name} is defined twice"));
        }
        self.punct('=')?;
        let op_pos = self.pos;
        let mnemonic = self.ident("an op name")?;
        let symbol = match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Some(s)
            }
            _ => None,
        };
        let mut operands = Vec::new();
        if matches!(self.peek(), Tok::Value(_)) {
            loop {
                operands.push(self.value_ref()?);
                if !self.eat_punct(',') {
                    break;
                }
            }
        }
        let mut attrs = AttrMap::new();
        if self.eat_punct('{') {
            loop {
                let key_pos = self.pos;
                let key = self.ident("an attribute name")?;
                self.punct('=')?;
                let value = self.attr()?;
                if attrs.insert(key.clone(), value).is_some() {
                    self.pos = key_pos;
                    return self.error_here(format!("attribute `{key}` is given twice"));
                }
                if !self.eat_punct(',') {
                    break;
                }
            }
            self.punct('}')?;
        }
        self.punct(':')?;
        let ty = self.tensor_type()?;
        let op = match Op::from_parts(&mnemonic, symbol, attrs) {
            Ok(op) => op,
            Err(message) => {
                self.pos = op_pos;
                return self.error_here(message);
            }
        };
        let id = ValueId(self.values.len());
        self.values.insert(name, id);
        Ok(Node { op, operands, ty })
    }

    fn attr(&mut self) -> Result<Attr, ParseError> {
        let tok = self.peek().clone();
        if tok != Tok::Eof {
            self.next();
        }
        match tok {
            Tok::Number(s) => {
                let is_int = s.bytes().all(|b| b.is_ascii_digit());
                if is_int {
                    match s.parse::<usize>() {
                        Ok(n) => Ok(Attr::Int(n)),
                        Err(_) => {
                            self.pos -= 1;
                            self.error_here(format!("integer `{s}` is too large"))
                        }
                    }
                } else {
                    match s.parse::<f32>() {
                        Ok(x) => Ok(Attr::Float(x)),
                        Err(_) => {
                            self.pos -= 1;
                            self.error_here(format!("bad number `{s}`"))
                        }
                    }
                }
            }
            Tok::Ident(s) => Ok(match s.as_str() {
                "true" => Attr::Bool(true),
                "false" => Attr::Bool(false),
                "inf" => Attr::Float(f32::INFINITY),
                "NaN" => Attr::Float(f32::NAN),
                _ => Attr::Ident(s),
            }),
            Tok::Punct('[') => {
                let mut items = Vec::new();
                if !self.eat_punct(']') {
                    loop {
                        items.push(self.attr()?);
                        if !self.eat_punct(',') {
                            break;
                        }
                    }
                    self.punct(']')?;
                }
                Ok(Attr::List(items))
            }
            _ => {
                if tok != Tok::Eof {
                    self.pos -= 1;
                }
                self.expected("an attribute value")
            }
        }
    }

    fn tensor_type(&mut self) -> Result<TensorType, ParseError> {
        let Tok::Ident(name) = self.peek().clone() else {
            return self.expected("an element type such as f32");
        };
        let Some(dtype) = DType::from_name(&name) else {
            let known: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
            return self.error_here(format!(
                "unknown element type `{name}`: expected one of {}",
                known.join(", ")
            ));
        };
        self.next();
        self.punct('[')?;
        let mut dims = Vec::new();
        if !self.eat_punct(']') {
            loop {
                dims.push(match self.peek().clone() {
                    Tok::Number(s) => match s.parse::<usize>() {
                        Ok(n) => Dim::Fixed(n),
                        Err(_) => return self.error_here(format!("bad dimension `{s}`")),
                    },
                    Tok::Ident(s) => Dim::Sym(s),
                    _ => return self.expected("a dimension (a size or a name like `seq`)"),
                });
                self.next();
                if !self.eat_punct(',') {
                    break;
                }
            }
            self.punct(']')?;
        }
        Ok(TensorType::new(dtype, Shape(dims)))
    }
}
