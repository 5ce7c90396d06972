//! Step output on its way from a transport to the observer and the state: redacted line by line,
//! then kept capped (head and tail).
//!
//! Transports only ever see an `Output`; the redactor sits inside it, so no transport can hand
//! unredacted text to anyone.

/// Which stream of the remote process a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// The redaction set (`secrets::Redactor`): every chunk passes through it before anyone sees it.
pub use crate::secrets::Redactor;

/// Default cap of each of the head and the tail kept of a step's output.
pub const DEFAULT_KEEP: usize = 64 * 1024;

/// Text capped to its first and last `keep` bytes (cut on char boundaries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CappedText {
    pub head: String,
    pub tail: String,
    /// Every byte pushed, kept or not.
    pub total_bytes: u64,
    keep: usize,
}

impl CappedText {
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            ..Self::default()
        }
    }

    pub fn push(&mut self, text: &str) {
        self.total_bytes += text.len() as u64;
        let room = self.keep.saturating_sub(self.head.len());
        if room > 0 && self.tail.is_empty() {
            let cut = floor_char_boundary(text, room);
            self.head.push_str(&text[..cut]);
            let rest = &text[cut..];
            if rest.is_empty() {
                return;
            }
            self.tail.push_str(rest);
        } else {
            self.tail.push_str(text);
        }
        if self.tail.len() > self.keep {
            let from = ceil_char_boundary(&self.tail, self.tail.len() - self.keep);
            self.tail.drain(..from);
        }
    }

    /// Bytes dropped between head and tail.
    pub fn omitted_bytes(&self) -> u64 {
        self.total_bytes - (self.head.len() + self.tail.len()) as u64
    }

    /// Head and tail joined, with a marker where bytes were dropped.
    pub fn text(&self) -> String {
        match self.omitted_bytes() {
            0 => format!("{}{}", self.head, self.tail),
            n => format!("{}\n[… {n} bytes omitted …]\n{}", self.head, self.tail),
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Called with each redacted chunk as it comes.
type Listener<'a> = Box<dyn FnMut(Stream, &str) + Send + 'a>;

/// Where a transport writes what a command prints.
pub struct Output<'a> {
    redactor: Redactor,
    listener: Listener<'a>,
    pending: [Vec<u8>; 2],
    /// Both streams, interleaved as they came: what the state stores.
    pub combined: CappedText,
    /// Stdout alone: where captures come from.
    pub stdout: CappedText,
    /// The last non-empty stderr line, for error messages.
    pub last_stderr_line: Option<String>,
}

impl<'a> Output<'a> {
    pub fn new(redactor: Redactor, listener: impl FnMut(Stream, &str) + Send + 'a) -> Self {
        Self::with_keep(redactor, DEFAULT_KEEP, listener)
    }

    pub fn with_keep(
        redactor: Redactor,
        keep: usize,
        listener: impl FnMut(Stream, &str) + Send + 'a,
    ) -> Self {
        Self {
            redactor,
            listener: Box::new(listener),
            pending: [Vec::new(), Vec::new()],
            combined: CappedText::new(keep),
            stdout: CappedText::new(keep),
            last_stderr_line: None,
        }
    }

    /// Output nobody listens to (still redacted and captured).
    pub fn discard(redactor: Redactor) -> Self {
        Self::new(redactor, |_, _| {})
    }

    /// Raw bytes from the command. Complete lines are redacted and passed on at once; a partial
    /// line waits for its end (or for `finish`) so a secret is never split across two chunks.
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) {
        let buf = &mut self.pending[stream as usize];
        buf.extend_from_slice(bytes);
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
            // Bound memory on output without newlines.
            if buf.len() > 1 << 20 {
                let all = std::mem::take(buf);
                self.emit(stream, &all);
            }
            return;
        };
        let rest = buf.split_off(last_nl + 1);
        let complete = std::mem::replace(buf, rest);
        self.emit(stream, &complete);
    }

    /// Flush partial lines. Transports call this when the command ended.
    pub fn finish(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream as usize]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8]) {
        let raw = String::from_utf8_lossy(bytes);
        let text = self.redactor.redact(&raw).into_owned();
        self.combined.push(&text);
        match stream {
            Stream::Stdout => self.stdout.push(&text),
            Stream::Stderr => {
                if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                    self.last_stderr_line = Some(line.trim().to_string());
                }
            }
        }
        (self.listener)(stream, &text);
    }

    /// The value a `capture` step yields: the last non-empty line of its trimmed stdout.
    pub fn capture_value(&self) -> Option<String> {
        let text = self.stdout.text();
        text.trim()
            .lines()
            .next_back()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn capped_text_keeps_head_and_tail() {
        let mut c = CappedText::new(4);
        c.push("abc");
        c.push("defgh");
        c.push("ij");
        assert_eq!(c.head, "abcd");
        assert_eq!(c.tail, "ghij");
        assert_eq!(c.total_bytes, 10);
        assert_eq!(c.text(), "abcd\n[… 2 bytes omitted …]\nghij");
        let mut small = CappedText::new(10);
        small.push("hello");
        assert_eq!(small.text(), "hello");
    }

    #[test]
    fn capped_text_cuts_on_char_boundaries() {
        let mut c = CappedText::new(3);
        c.push("ééééé");
        assert_eq!(c.head, "é");
        assert!(c.tail.len() <= 3);
        assert_eq!(c.tail, "é");
    }

    #[test]
    fn redacts_whole_lines_even_when_a_secret_spans_chunks() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let redactor = Redactor::new();
        redactor.add("hunter2");
        let mut out = Output::new(redactor, move |stream, text| {
            sink.lock().unwrap().push((stream, text.to_string()))
        });
        out.push(Stream::Stdout, b"password is hun");
        out.push(Stream::Stdout, b"ter2\nnext");
        out.push(Stream::Stderr, b"oops hunter2\n");
        out.finish();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (Stream::Stdout, "password is [redacted]\n".to_string()),
                (Stream::Stderr, "oops [redacted]\n".to_string()),
                (Stream::Stdout, "next".to_string()),
            ]
        );
        assert!(!out.combined.text().contains("hunter2"));
        assert_eq!(out.last_stderr_line.as_deref(), Some("oops [redacted]"));
        assert_eq!(out.capture_value().as_deref(), Some("next"));
    }
}
