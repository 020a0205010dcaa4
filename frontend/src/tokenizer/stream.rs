//! Incremental detokenization of generated ids.

use super::{Tokenizer, TokenizerError};

/// Turns generated ids into text chunks one id at a time.
///
/// A byte-level token can end inside a multi-byte UTF-8 character; such a
/// chunk is held back until the ids that complete the character arrive.
/// Each step decodes the pending ids together with the ids of the last
/// emitted chunk (as context, since some decoders treat a first token
/// specially) and emits the new text once it does not end in U+FFFD.
#[derive(Debug, Clone)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    /// `ids[..read]`: the last emitted chunk; `ids[read..]`: not emitted yet.
    ids: Vec<u32>,
    read: usize,
}

impl<'a> DecodeStream<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// Adds one id; returns the text it completes, if any. An id that fails
    /// to decode is not kept, so the stream stays usable.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = self.pending().inspect_err(|_| {
            self.ids.pop();
        })?;
        if text.is_empty() || text.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(None);
        }
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(Some(text))
    }

    /// Ends the stream and returns the text still held back (an incomplete
    /// character at the end comes out as U+FFFD).
    pub fn finish(self) -> Result<String, TokenizerError> {
        self.pending()
    }

    /// Text of the ids not emitted yet.
    fn pending(&self) -> Result<String, TokenizerError> {
        let context = self.tokenizer.decode(&self.ids[..self.read])?;
        let text = self.tokenizer.decode(&self.ids)?;
        text.strip_prefix(&context)
            .map(str::to_owned)
            .ok_or_else(|| TokenizerError::Backend {
                op: "decode",
                msg: format!(
                    "streaming: decoding more ids changed earlier text ({context:?} -> {text:?})"
                ),
            })
    }
}
