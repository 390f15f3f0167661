//! Rows in `COPY ... FROM STDIN` text format, for a [`Fold`](infra::projection::Fold)
//! writing the rows it built in memory: PostgreSQL parses them as they stream in, with no
//! statement, parameters or arrays in between. Outside a transaction, each `COPY` of at
//! most [`CHUNK_ROWS`] rows commits on its own: none holds the log's horizon back for long.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::io::Write;
use uuid::Uuid;

/// Rows per `COPY` statement: as many as a rebuild's batch, so that no statement holds the
/// log's horizon back for longer than a batch's transaction does.
pub(crate) const CHUNK_ROWS: usize = 5_000;

/// `COPY`s into one table, filled row by row, a statement every [`CHUNK_ROWS`] rows.
pub(crate) struct Copy<'c> {
    conn: &'c mut PgConnection,
    statement: String,
    buf: Vec<u8>,
    rows: usize,
    first: bool,
}

impl<'c> Copy<'c> {
    /// `COPY table (columns) FROM STDIN` on `conn`.
    pub(crate) fn into(conn: &'c mut PgConnection, table: &str, columns: &str) -> Self {
        Self {
            conn,
            statement: format!("COPY {table} ({columns}) FROM STDIN"),
            buf: Vec::new(),
            rows: 0,
            first: true,
        }
    }

    fn sep(&mut self) {
        if !self.first {
            self.buf.push(b'\t');
        }
        self.first = false;
    }

    pub(crate) fn text(&mut self, value: &str) -> &mut Self {
        self.sep();
        for byte in value.bytes() {
            match byte {
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                b'\t' => self.buf.extend_from_slice(b"\\t"),
                b'\n' => self.buf.extend_from_slice(b"\\n"),
                b'\r' => self.buf.extend_from_slice(b"\\r"),
                _ => self.buf.push(byte),
            }
        }
        self
    }

    pub(crate) fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    pub(crate) fn null(&mut self) -> &mut Self {
        self.sep();
        self.buf.extend_from_slice(b"\\N");
        self
    }

    pub(crate) fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.sep();
        let mut text = Uuid::encode_buffer();
        self.buf
            .extend_from_slice(value.hyphenated().encode_lower(&mut text).as_bytes());
        self
    }

    pub(crate) fn int(&mut self, value: impl Into<i64>) -> &mut Self {
        self.sep();
        let _ = write!(self.buf, "{}", value.into());
        self
    }

    pub(crate) fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => self.int(value),
            None => self.null(),
        }
    }

    pub(crate) fn bool(&mut self, value: bool) -> &mut Self {
        self.sep();
        self.buf.push(if value { b't' } else { b'f' });
        self
    }

    /// To the microsecond, truncated, as the binary parameters of the statements store it.
    pub(crate) fn timestamp(&mut self, value: DateTime<Utc>) -> &mut Self {
        self.sep();
        let _ = write!(self.buf, "{}", value.format("%Y-%m-%d %H:%M:%S%.6f+00"));
        self
    }

    pub(crate) fn json(&mut self, value: &serde_json::Value) -> &mut Self {
        let text = value.to_string();
        self.text(&text)
    }

    /// Ends the row; sends the chunk once it has [`CHUNK_ROWS`] rows.
    pub(crate) async fn end_row(&mut self) -> Result<(), sqlx::Error> {
        self.buf.push(b'\n');
        self.first = true;
        self.rows += 1;
        if self.rows >= CHUNK_ROWS {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), sqlx::Error> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut copy = self.conn.copy_in_raw(&self.statement).await?;
        copy.send(std::mem::take(&mut self.buf)).await?;
        copy.finish().await?;
        self.rows = 0;
        Ok(())
    }

    /// Sends the last chunk.
    pub(crate) async fn finish(mut self) -> Result<(), sqlx::Error> {
        self.send().await
    }
}
