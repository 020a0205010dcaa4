//! Incremental detokenization of generated ids.

use super::{Tokenizer, TokenizerError};

/// Turns generated ids into text chunks one id at a time.
///
/// A byte-level token can end inside a multi-byte UTF-8 character; such a
/// chunk is held back until the ids that complete the character arrive.
/// Each step decodes the pending ids together with the ids of the last
/// emitted chunk (as context, since some decoders treat a first token
/// specially) and emits the new text once it does not end in U+FFFD.
///
/// The work per id is bounded: a UTF-8 character spans at most four byte
/// tokens, so after [`DecodeStream::MAX_HELD`] ids that still end inside a character (a
/// stray byte the model will never complete) the text is emitted as it is,
/// U+FFFD included, and the stream starts afresh without context. Each
/// step therefore decodes at most `2 * MAX_HELD` ids.
#[derive(Debug, Clone)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    /// `ids[..read]`: the last emitted chunk; `ids[read..]`: not emitted yet.
    ids: Vec<u32>,
    read: usize,
}

impl<'a> DecodeStream<'a> {
    /// The most ids held back waiting for the rest of a character.
    pub const MAX_HELD: usize = 4;

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
        let held = self.ids.len() - self.read;
        if text.is_empty() || text.ends_with(char::REPLACEMENT_CHARACTER) {
            if held < Self::MAX_HELD {
                return Ok(None);
            }
            // Give up waiting: emit what there is and drop the context,
            // which no later id can extend consistently.
            self.ids.clear();
            self.read = 0;
            return Ok((!text.is_empty()).then_some(text));
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
