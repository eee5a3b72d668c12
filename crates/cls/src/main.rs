//! The `cls` binary: parses the command line and runs one role.

use clap::Parser;

/// mimalloc rather than glibc's malloc: allocation and freeing were ~10% of the API's CPU on GETs (glibc
/// consolidating its free lists among them); with mimalloc the API's CPU per GET fell ~7% (alternating binaries).
/// It costs resident memory: `cls bench scheduler --objects 200000` showed the reconciler at 28.5 MiB vs 19.9 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = cls::Cli::parse();
    cls::init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(cls::run(cli))
}
