//! `sketchd backup`: an online backup of a server into a new data
//! directory, which `sketchd serve --data DIR` opens as it is.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;

use sketchd::pb;

use super::{ConnectArgs, DEFAULT_SERVER};

#[derive(clap::Args)]
pub struct BackupArgs {
    /// Server URL.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// The new data directory to write (it must not exist, or be empty);
    /// `sketchd serve --data DIR` then answers as the server did at the
    /// backup's revision.
    #[arg(long)]
    out: PathBuf,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let out = args.out.clone();
    if out.exists()
        && std::fs::read_dir(&out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some()
    {
        anyhow::bail!(
            "{} is not empty: give a new directory to write the backup to",
            out.display()
        );
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    let download = out.with_file_name(format!(".{name}.snapshot-download"));
    let client = args.connect.connect(&args.server).await?;
    let mut chunks = client
        .admin_client()
        .backup(pb::BackupRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("backup of {}", args.server))?
        .into_inner();
    if let Some(parent) = download.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = std::fs::File::create(&download)
        .with_context(|| format!("cannot write {}", download.display()))?;
    let progress = std::io::stderr().is_terminal();
    let mut received = 0u64;
    let mut summary = None;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = chunks
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("the server stopped the backup: {}", s.message()))?
        {
            file.write_all(&chunk.data)
                .with_context(|| format!("cannot write {}", download.display()))?;
            received += chunk.data.len() as u64;
            if progress {
                eprint!("\rreceived {:.1} MiB", received as f64 / (1 << 20) as f64);
            }
            if chunk.summary.is_some() {
                summary = chunk.summary;
            }
        }
        file.sync_all()
            .with_context(|| format!("cannot write {}", download.display()))?;
        Ok(())
    }
    .await;
    if progress {
        eprintln!();
    }
    if let Err(e) = result {
        let _ = std::fs::remove_file(&download);
        return Err(e);
    }
    let Some(summary) = summary else {
        let _ = std::fs::remove_file(&download);
        anyhow::bail!("the backup stream ended before its last chunk; nothing was written");
    };
    let (source, target) = (download.clone(), out.clone());
    let restored = tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&source)?;
        anyhow::Ok(sketchd::store::snapshot::restore(input, &target)?)
    })
    .await?;
    let _ = std::fs::remove_file(&download);
    let restored = restored?;
    anyhow::ensure!(
        restored.records == summary.records,
        "the backup holds {} records but the server sent {}",
        restored.records,
        summary.records
    );
    outln!(
        "backup of revision {} written to {} ({} records, {:.1} MiB); serve it with `sketchd serve --data {}`",
        summary.revision,
        out.display(),
        summary.records,
        summary.bytes as f64 / (1 << 20) as f64,
        out.display()
    );
    Ok(())
}
