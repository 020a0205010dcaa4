//! Stop sequences over streamed text: text that might be the start of a
//! stop sequence is held back until the next piece settles it, so a client
//! never sees any part of a stop sequence.

pub struct StopText {
    stops: Vec<String>,
    /// Text not sent yet.
    held: String,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> StopText {
        StopText {
            stops,
            held: String::new(),
        }
    }

    /// Adds generated text; returns the text that may be sent now and
    /// whether a stop sequence ended the generation (the text before it is
    /// what is returned; the sequence and anything after it are dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        let keep = self.pending_prefix();
        let rest = self.held.split_off(self.held.len() - keep);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The text still held back, at the end of a generation that no stop
    /// sequence ended.
    pub fn finish(self) -> String {
        self.held
    }

    /// Length of the longest end of the held text that begins some stop
    /// sequence (on a character boundary).
    fn pending_prefix(&self) -> usize {
        (1..=self.held.len())
            .rev()
            .filter(|&k| self.held.is_char_boundary(self.held.len() - k))
            .find(|&k| {
                let end = &self.held[self.held.len() - k..];
                self.stops.iter().any(|s| s.starts_with(end))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, stopped) = s.push(p);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn a_stop_split_over_pieces_is_never_sent() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "o"]),
            ("abcENo".into(), false)
        );
        assert_eq!(run(&["\n\n", "é!"], &["é", "é", "!"]), ("é".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn held_text_waits_only_while_it_may_start_a_stop() {
        let mut s = StopText::new(vec!["<end>".into()]);
        assert_eq!(s.push("hi <e"), ("hi ".into(), false));
        assert_eq!(s.push("x"), ("<ex".into(), false));
    }
}
