//! The `sketchd` binary: argument parsing and dispatch only.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: the commit thread allocates what
/// the checkpoint thread frees, and glibc spent a third of the server's CPU
/// in `_int_malloc` on that pattern at scale 1 (docs/performance-history.md); it
/// also returns freed memory to the system.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long (ms) mimalloc keeps freed memory before returning it to the
/// system. Its default (1 s) kept 80-100 MiB more resident at the peaks
/// of a scale-0.1 ingest; 100 ms cost no measurable CPU there, while 0-10
/// ms cost 10-20 % more (docs/performance-history.md). `MIMALLOC_PURGE_DELAY`
/// overrides it.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// `mi_option_purge_delay`, which `libmimalloc-sys` does not name: the
/// option just before `mi_option_use_numa_nodes` in mimalloc's
/// `mi_option_t` (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t =
    libmimalloc_sys::mi_option_use_numa_nodes - 1;

fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it on each purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        disable_transparent_huge_pages();
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them (`madvise(MADV_HUGEPAGE)` on its arenas), and a 2 MiB page stays
/// resident while any of its 4 KiB pages holds a live object: at scale 1
/// the server's peak RSS was 554-584 MiB with them and 460-470 MiB
/// without, at the same ingest rate (docs/performance-history.md).
/// `MIMALLOC_ALLOW_THP=1` keeps them. Only faults after this call are
/// affected, and little has been touched yet.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and only sets a
    // flag on this process's memory map.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "warning: cannot turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

fn main() -> ExitCode {
    tune_allocator();
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKETCHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    cli::output::exit_code(runtime.block_on(cli::run(args)))
}
