//! The `converge` command: programs run as ports of a converge node, with
//! the exit statuses and flags that `timeout`, GNU parallel and supervisord
//! users know.

mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status of `converge run` when converge itself failed (a bad flag
/// value, no node), as `timeout` uses 125.
const FAILED: u8 = 125;

#[derive(Parser)]
#[command(
    name = "converge",
    version,
    about = "Run programs as supervised processes of a converge node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one program and exit as it did (its code; 128+N for signal N;
    /// 124 when it timed out; 126 not executable; 127 not found; 125 when
    /// converge failed).
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                // Usage errors of `run` are converge's failures (125), as
                // `timeout` reports its own.
                _ if std::env::args().nth(1).as_deref() == Some("run") => ExitCode::from(FAILED),
                _ => ExitCode::from(2),
            };
        }
    };
    match cli.command {
        Command::Run(args) => match run::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("converge run: {e}");
                ExitCode::from(FAILED)
            }
        },
    }
}
