//! The `cls` binary: parses the command line and runs one role.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cls::Cli::parse();
    cls::init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(cls::run(cli))
}
