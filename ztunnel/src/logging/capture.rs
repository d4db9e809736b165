//! Test-only log capture: a `MakeWriter` that appends to a shared buffer.

use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use super::{build, parse_filter, LogHandle};
use crate::accesslog::LogFormat;

#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub(crate) fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Each captured line parsed as JSON (for the JSON format).
    pub(crate) fn json_lines(&self) -> Vec<serde_json::Value> {
        self.contents()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

pub(crate) struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter(self.0.clone())
    }
}

/// A subscriber (as a `Dispatch`, to use with `with_default`) writing into a `Capture`.
/// The handle only works while the `Dispatch` is alive.
pub(crate) fn capture(format: LogFormat, spec: &str) -> (tracing::Dispatch, LogHandle, Capture) {
    let cap = Capture::default();
    let filter = parse_filter(spec).unwrap();
    let (subscriber, handle) = build(format, cap.clone(), filter, false);
    (tracing::Dispatch::new(subscriber), handle, cap)
}
