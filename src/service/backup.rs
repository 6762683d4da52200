//! `Admin.Backup`: a snapshot of the store (`store::snapshot`), written to
//! a file beside the data and streamed in chunks, then deleted.

use std::io::Read;
use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::{Response, Status};

use super::{status, RowStream};
use crate::engine::Engine;
use crate::error::Error;
use crate::pb;

/// Bytes per chunk.
const CHUNK: usize = 1 << 20;

pub async fn stream(engine: Arc<Engine>) -> Result<Response<RowStream<pb::BackupChunk>>, Status> {
    let path = engine.store().dir().join(format!(
        "backup-{}-{}.snapshot",
        std::process::id(),
        engine.clock().now_unix_seconds()
    ));
    let summary = engine.snapshot_to(path.clone()).await;
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(status(e));
        }
    };
    let (tx, rx) = mpsc::channel::<Result<pb::BackupChunk, Status>>(4);
    std::thread::Builder::new()
        .name("sketchd-backup".into())
        .spawn(move || {
            let sent = send_file(&path, &tx, summary);
            let _ = std::fs::remove_file(&path);
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(status(e)));
            }
        })
        .map_err(|e| status(Error::io("backup thread", e)))?;
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

fn send_file(
    path: &std::path::Path,
    tx: &mpsc::Sender<Result<pb::BackupChunk, Status>>,
    summary: crate::store::snapshot::SnapshotSummary,
) -> Result<(), Error> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut file, &mut buf).map_err(|e| Error::io(path, e))?;
        let last = n < CHUNK;
        let chunk = pb::BackupChunk {
            data: buf[..n].to_vec(),
            summary: last.then_some(pb::BackupSummary {
                revision: summary.checkpoint_lsn,
                cluster_position: summary.cluster_position,
                records: summary.records,
                bytes: summary.bytes,
            }),
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            // The client went away.
            return Ok(());
        }
        if last {
            return Ok(());
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
