//! The run's trace: every step, fault, request outcome and decision, one line each, hashed
//! as it is written. Two runs of one seed must produce the same hash.

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::Write;

use sha2::{Digest, Sha256};

/// How many trailing lines a violation report shows.
pub const TAIL_LINES: usize = 40;

/// Lines of one run.
pub struct Trace {
    hasher: Sha256,
    lines: u64,
    tail: VecDeque<String>,
    out: Option<Box<dyn Write + Send>>,
    echo: bool,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace").field("lines", &self.lines).finish()
    }
}

impl Trace {
    /// A trace, also written to `out` when given and echoed to stderr when `echo`.
    pub fn new(out: Option<Box<dyn Write + Send>>, echo: bool) -> Self {
        Trace {
            hasher: Sha256::new(),
            lines: 0,
            tail: VecDeque::with_capacity(TAIL_LINES),
            out,
            echo,
        }
    }

    /// Appends one line stamped with the virtual time.
    pub fn record(&mut self, now_ms: u64, line: impl Display) {
        let line = format!("{:>9}.{:03} {line}", now_ms / 1_000, now_ms % 1_000);
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.lines += 1;
        if let Some(out) = self.out.as_mut() {
            // A trace file that cannot be written must not change the run; the hash still
            // covers every line.
            let _ = writeln!(out, "{line}");
        }
        if self.echo {
            eprintln!("{line}");
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Lines so far.
    pub fn len(&self) -> u64 {
        self.lines
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The last [`TAIL_LINES`] lines.
    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }

    /// Hex SHA-256 of every line so far.
    pub fn hash_hex(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Flushes the trace file.
    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
    }
}
