//! The `keystone` binary: parse arguments, call the library, print. Nothing else lives here.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
