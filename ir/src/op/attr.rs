//! Attributes: how each field type of an op is written to and read from
//! the textual form. The op table (`super`) derives an op's attribute list,
//! printer and parser from its fields' types through [`AttrField`], so an
//! attribute type is described here once for every op that uses it.

use std::collections::BTreeMap;
use std::fmt;

use crate::quant::{Arithmetic, Granularity};
use crate::types::{Dim, Shape};

/// An attribute value as it appears in the textual form.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(usize),
    Float(f32),
    Bool(bool),
    Ident(String),
    List(Vec<Attr>),
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Int(n) => write!(f, "{n}"),
            // `{:?}` is the shortest text that parses back to the same f32.
            Attr::Float(x) => write!(f, "{x:?}"),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Ident(s) => f.write_str(s),
            Attr::List(items) => {
                f.write_str("[")?;
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Attributes as parsed, before they are checked against an op.
pub type AttrMap = BTreeMap<String, Attr>;

/// The parts of one op's text being read: its attributes and its quoted
/// name, taken field by field; whatever is left over is an error.
pub struct AttrReader<'a> {
    mnemonic: &'a str,
    symbol: Option<String>,
    attrs: AttrMap,
}

impl<'a> AttrReader<'a> {
    pub fn new(mnemonic: &'a str, symbol: Option<String>, attrs: AttrMap) -> AttrReader<'a> {
        AttrReader {
            mnemonic,
            symbol,
            attrs,
        }
    }

    /// Takes the attribute `key`, which the op needs.
    pub fn take(&mut self, key: &str) -> Result<Attr, String> {
        self.attrs
            .remove(key)
            .ok_or_else(|| format!("`{}` needs attribute `{key}`", self.mnemonic))
    }

    /// Takes the attribute `key` if it is there.
    pub fn take_optional(&mut self, key: &str) -> Option<Attr> {
        self.attrs.remove(key)
    }

    fn take_symbol(&mut self) -> Result<String, String> {
        self.symbol.take().ok_or_else(|| {
            format!(
                "`{m}` needs a quoted name, e.g. {m} \"tokens\"",
                m = self.mnemonic
            )
        })
    }

    /// Fails on a quoted name or an attribute that no field took.
    pub fn finish(self) -> Result<(), String> {
        if self.symbol.is_some() {
            return Err(format!("`{}` takes no quoted name", self.mnemonic));
        }
        match self.attrs.keys().next() {
            Some(key) => Err(format!("`{}` has no attribute `{key}`", self.mnemonic)),
            None => Ok(()),
        }
    }
}

/// A field type of an op: how it prints as attributes and parses back.
/// A field usually is one attribute named after it; a `String` field is
/// the op's quoted name (`input "tokens"`), and a [`Granularity`] writes
/// `group_size` beside `granularity` when it has one.
pub trait AttrField: Sized {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>);
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<Self, String>;
    /// The op's quoted name, for the one field type that is one.
    fn as_symbol(&self) -> Option<&str> {
        None
    }
}

impl AttrField for usize {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        out.push((key, Attr::Int(*self)));
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<usize, String> {
        int(&reader.take(key)?, key)
    }
}

/// An optional count, written only when present (so that texts written
/// before the attribute existed still read).
impl AttrField for Option<usize> {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        if let Some(n) = self {
            out.push((key, Attr::Int(*n)));
        }
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<Option<usize>, String> {
        reader
            .take_optional(key)
            .map(|a| match int(&a, key)? {
                0 => Err(format!("`{key}` must be positive")),
                n => Ok(n),
            })
            .transpose()
    }
}

impl AttrField for f32 {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        out.push((key, Attr::Float(*self)));
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<f32, String> {
        match reader.take(key)? {
            Attr::Float(x) => Ok(x),
            // Integers are exact in f32 only up to 2^24; larger ones are refused.
            Attr::Int(n) if n <= 1 << 24 => Ok(n as f32),
            other => Err(format!("`{key}` must be a number, found {other}")),
        }
    }
}

impl AttrField for bool {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        out.push((key, Attr::Bool(*self)));
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<bool, String> {
        match reader.take(key)? {
            Attr::Bool(b) => Ok(b),
            other => Err(format!("`{key}` must be true or false, found {other}")),
        }
    }
}

impl AttrField for String {
    fn write_attr(&self, _key: &'static str, _out: &mut Vec<(&'static str, Attr)>) {}
    fn read_attr(_key: &'static str, reader: &mut AttrReader) -> Result<String, String> {
        reader.take_symbol()
    }
    fn as_symbol(&self) -> Option<&str> {
        Some(self)
    }
}

impl AttrField for Vec<usize> {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        out.push((
            key,
            Attr::List(self.iter().map(|&n| Attr::Int(n)).collect()),
        ));
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<Vec<usize>, String> {
        match reader.take(key)? {
            Attr::List(items) => items.iter().map(|a| int(a, key)).collect(),
            other => Err(format!("`{key}` must be a list, found {other}")),
        }
    }
}

impl AttrField for Shape {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        let dims = self.dims().iter().map(|d| match d {
            Dim::Fixed(n) => Attr::Int(*n),
            Dim::Sym(s) => Attr::Ident(s.clone()),
        });
        out.push((key, Attr::List(dims.collect())));
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<Shape, String> {
        match reader.take(key)? {
            Attr::List(items) => Ok(Shape(
                items
                    .into_iter()
                    .map(|a| match a {
                        Attr::Int(n) => Ok(Dim::Fixed(n)),
                        Attr::Ident(s) => Ok(Dim::Sym(s)),
                        other => Err(format!("bad dimension {other} in `{key}`")),
                    })
                    .collect::<Result<_, _>>()?,
            )),
            other => Err(format!("`{key}` must be a list, found {other}")),
        }
    }
}

impl AttrField for Granularity {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        let name = match self {
            Granularity::Tensor => "tensor",
            Granularity::Channel => "channel",
            Granularity::Group(_) => "group",
        };
        out.push((key, Attr::Ident(name.into())));
        if let Granularity::Group(n) = self {
            out.push(("group_size", Attr::Int(*n)));
        }
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<Granularity, String> {
        match ident(&reader.take(key)?, key)?.as_str() {
            "tensor" => Ok(Granularity::Tensor),
            "channel" => Ok(Granularity::Channel),
            "group" => match int(&reader.take("group_size")?, "group_size")? {
                0 => Err("`group_size` must be positive".into()),
                g => Ok(Granularity::Group(g)),
            },
            other => Err(format!(
                "unknown granularity `{other}`: expected tensor, channel or group"
            )),
        }
    }
}

/// An enum attribute written as a name, e.g. `part = u`.
pub trait NamedAttr: Sized + Copy + 'static {
    /// What the attribute is, for error messages ("part", "scheme").
    const WHAT: &'static str;
    const NAMES: &'static [(Self, &'static str)];
}

impl<T: NamedAttr + PartialEq> AttrField for T {
    fn write_attr(&self, key: &'static str, out: &mut Vec<(&'static str, Attr)>) {
        let name = T::NAMES
            .iter()
            .find(|(v, _)| v == self)
            .map(|(_, n)| *n)
            .expect("every variant is named");
        out.push((key, Attr::Ident(name.into())));
    }
    fn read_attr(key: &'static str, reader: &mut AttrReader) -> Result<T, String> {
        let name = ident(&reader.take(key)?, key)?;
        T::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = T::NAMES.iter().map(|(_, n)| *n).collect();
                let expected = match names.split_last() {
                    Some((last, [])) => last.to_string(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                };
                format!("unknown {} `{name}`: expected {expected}", T::WHAT)
            })
    }
}

/// Declares the names of an enum attribute's variants, once.
macro_rules! named_attr {
    ($ty:ty, $what:literal, { $($variant:path => $name:literal),* $(,)? }) => {
        impl NamedAttr for $ty {
            const WHAT: &'static str = $what;
            const NAMES: &'static [(Self, &'static str)] = &[$(($variant, $name)),*];
        }
    };
}

named_attr!(Arithmetic, "arithmetic", {
    Arithmetic::F32 => "f32",
    Arithmetic::Bf16Exact => "bf16",
});

fn ident(a: &Attr, key: &str) -> Result<String, String> {
    match a {
        Attr::Ident(s) => Ok(s.clone()),
        other => Err(format!("`{key}` must be a name, found {other}")),
    }
}

fn int(a: &Attr, key: &str) -> Result<usize, String> {
    match a {
        Attr::Int(n) => Ok(*n),
        other => Err(format!(
            "`{key}` must be a non-negative integer, found {other}"
        )),
    }
}

pub(crate) use named_attr;
