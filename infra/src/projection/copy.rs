//! Rows in `COPY ... FROM STDIN (FORMAT binary)`, for a [`Fold`](super::Fold) writing the
//! rows it built in memory: PostgreSQL takes each value as it stores it (sixteen bytes for a
//! UUID, microseconds for a timestamp), with no statement, parameters or arrays in between
//! and nothing to parse. A [`Copy`] encodes the rows of one table in chunks of at most
//! [`CHUNK_ROWS`] and hands each, one `COPY` statement, to a [`CopySink`], which writes them
//! while the fold goes on.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

use super::ApplyError;

/// Rows per `COPY` statement: as many as a rebuild's batch, so that no statement (each
/// commits on its own) holds the log's horizon back for longer than a batch's transaction
/// does.
pub const CHUNK_ROWS: usize = 5_000;

/// One `COPY` statement's rows, encoded.
#[derive(Debug)]
pub struct CopyChunk {
    pub table: &'static str,
    /// `COPY table (columns) FROM STDIN (FORMAT binary)`.
    pub statement: Arc<str>,
    /// The whole of the statement's data: header, rows and trailer.
    pub data: Vec<u8>,
    pub rows: usize,
    /// The table's rows may go in in any order and on any connection (an insert-only
    /// table); otherwise a table's chunks go in the order they were made, on one connection
    /// (final rows sorted by key, each landing beside the last in the key's index).
    pub any_order: bool,
}

/// Where a fold's chunks go: written, each `COPY` committing on its own, in the background.
/// An error is the failure of some earlier chunk as well as of this one.
#[async_trait]
pub trait CopySink: Send {
    async fn copy(&mut self, chunk: CopyChunk) -> Result<(), ApplyError>;
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Encodes the rows of one table, a field at a time in the table's column order; each value
/// must be of its column's exact type (`int` for `bigint`, `int4` for `integer`): the
/// binary format converts nothing.
pub struct Copy<'s> {
    sink: &'s mut dyn CopySink,
    table: &'static str,
    statement: Arc<str>,
    any_order: bool,
    buf: Vec<u8>,
    rows: usize,
    /// Where the current row's field count goes, and the count so far.
    row_start: usize,
    fields: i16,
}

impl std::fmt::Debug for Copy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copy")
            .field("table", &self.table)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl<'s> Copy<'s> {
    /// `COPY table (columns) FROM STDIN (FORMAT binary)`, through `sink`. `any_order`: see
    /// [`CopyChunk::any_order`].
    pub fn into(
        sink: &'s mut dyn CopySink,
        table: &'static str,
        columns: &str,
        any_order: bool,
    ) -> Self {
        let mut copy = Self {
            sink,
            table,
            statement: format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)").into(),
            any_order,
            buf: Vec::new(),
            rows: 0,
            row_start: 0,
            fields: 0,
        };
        copy.begin_row();
        copy
    }

    fn begin_row(&mut self) {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(HEADER);
        }
        self.row_start = self.buf.len();
        self.buf.extend_from_slice(&0i16.to_be_bytes());
        self.fields = 0;
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.fields += 1;
        let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.field(value.as_bytes())
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    pub fn null(&mut self) -> &mut Self {
        self.fields += 1;
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.field(value.as_bytes())
    }

    /// A `bigint`.
    pub fn int(&mut self, value: i64) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => self.int(value),
            None => self.null(),
        }
    }

    /// An `integer`.
    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.field(&[u8::from(value)])
    }

    /// A `timestamptz`, to the microsecond, truncated, as the statements' binary parameters
    /// store it.
    pub fn timestamp(&mut self, value: DateTime<Utc>) -> &mut Self {
        self.field(&(value.timestamp_micros() - POSTGRES_EPOCH_MICROS).to_be_bytes())
    }

    /// A `jsonb`: its format's version (1), then the text.
    pub fn json(&mut self, value: &serde_json::Value) -> &mut Self {
        let mut bytes = vec![1u8];
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut bytes, value);
        self.field(&bytes)
    }

    /// Ends the row; hands the chunk to the sink once it has [`CHUNK_ROWS`] rows.
    pub async fn end_row(&mut self) -> Result<(), ApplyError> {
        let at = self.row_start;
        self.buf[at..at + 2].copy_from_slice(&self.fields.to_be_bytes());
        self.row_start = self.buf.len();
        self.rows += 1;
        if self.rows >= CHUNK_ROWS {
            self.send().await?;
        }
        self.begin_row();
        Ok(())
    }

    async fn send(&mut self) -> Result<(), ApplyError> {
        // Drops the row begun but not ended (none when called from `end_row`).
        self.buf.truncate(self.row_start);
        if self.rows == 0 {
            self.buf.clear();
            return Ok(());
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let chunk = CopyChunk {
            table: self.table,
            statement: Arc::clone(&self.statement),
            data: std::mem::take(&mut self.buf),
            rows: std::mem::take(&mut self.rows),
            any_order: self.any_order,
        };
        self.sink.copy(chunk).await
    }

    /// Hands over the last chunk.
    pub async fn finish(mut self) -> Result<(), ApplyError> {
        self.send().await
    }
}
