//! The connections a rebuild that folds in memory writes its rows on (ADR 0009): a
//! [`CopySink`] whose `COPY` chunks each connection's task writes while the fold goes on,
//! so the next batch is evolved (and its rows encoded) while PostgreSQL takes the last's.

use async_trait::async_trait;
use infra::projection::{ApplyError, CopyChunk, CopySink};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks waiting per connection: what bounds the memory between the fold and PostgreSQL.
const QUEUED: usize = 2;

struct Lane {
    queue: Option<mpsc::Sender<CopyChunk>>,
    task: Option<JoinHandle<Result<(), sqlx::Error>>>,
}

/// `COPY` chunks written in the background, each connection in a task of its own, every
/// statement committing on its own. A table whose rows go in in order keeps to one
/// connection; an insert-only table's chunks go round the connections.
pub(crate) struct Writers {
    lanes: Vec<Lane>,
    /// The lane of each table written in order, from its first chunk on.
    tables: Vec<(&'static str, usize)>,
    next: usize,
}

impl Writers {
    /// Writes on `conns`, set up for the tables (`search_path`) and in no transaction.
    pub(crate) fn new(conns: Vec<PgConnection>) -> Self {
        let lanes = conns
            .into_iter()
            .map(|conn| {
                let (queue, chunks) = mpsc::channel(QUEUED);
                Lane {
                    queue: Some(queue),
                    task: Some(tokio::spawn(write(conn, chunks))),
                }
            })
            .collect();
        Self {
            lanes,
            tables: Vec::new(),
            next: 0,
        }
    }

    fn lane_for(&mut self, chunk: &CopyChunk) -> usize {
        if !chunk.any_order
            && let Some(&(_, lane)) = self.tables.iter().find(|(t, _)| *t == chunk.table)
        {
            return lane;
        }
        let lane = self.next % self.lanes.len().max(1);
        self.next += 1;
        if !chunk.any_order {
            self.tables.push((chunk.table, lane));
        }
        lane
    }

    /// Waits until every chunk handed over is written; the first failure, if one was not.
    pub(crate) async fn finish(mut self) -> Result<(), ApplyError> {
        let mut result = Ok(());
        for lane in &mut self.lanes {
            // Closing the queue ends the task once it wrote what was queued.
            lane.queue = None;
            if let Some(task) = lane.task.take() {
                let outcome = joined(task).await;
                if result.is_ok() {
                    result = outcome;
                }
            }
        }
        result
    }
}

impl Drop for Writers {
    /// Dropped without [`finish`](Writers::finish) (the build failed): nothing more is
    /// written. What was is not the shadow's until a checkpoint says so.
    fn drop(&mut self) {
        for lane in &mut self.lanes {
            if let Some(task) = lane.task.take() {
                task.abort();
            }
        }
    }
}

async fn joined(task: JoinHandle<Result<(), sqlx::Error>>) -> Result<(), ApplyError> {
    match task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(ApplyError::Database(err)),
        Err(err) => Err(ApplyError::Invalid(format!("a COPY writer stopped: {err}"))),
    }
}

#[async_trait]
impl CopySink for Writers {
    async fn copy(&mut self, chunk: CopyChunk) -> Result<(), ApplyError> {
        if self.lanes.is_empty() {
            return Err(ApplyError::Invalid("no connection to COPY on".to_owned()));
        }
        let at = self.lane_for(&chunk);
        let lane = &mut self.lanes[at];
        if let Some(queue) = &lane.queue
            && queue.send(chunk).await.is_ok()
        {
            return Ok(());
        }
        // The lane's task ended: it failed; its error is the answer.
        lane.queue = None;
        match lane.task.take() {
            Some(task) => joined(task)
                .await
                .and(Err(ApplyError::Invalid("a COPY writer stopped".to_owned()))),
            None => Err(ApplyError::Invalid(
                "a COPY writer failed earlier".to_owned(),
            )),
        }
    }
}

async fn write(
    mut conn: PgConnection,
    mut chunks: mpsc::Receiver<CopyChunk>,
) -> Result<(), sqlx::Error> {
    while let Some(chunk) = chunks.recv().await {
        let mut copy = conn.copy_in_raw(&chunk.statement).await?;
        copy.send(chunk.data).await?;
        copy.finish().await?;
    }
    let _ = conn.close().await;
    Ok(())
}
