//! `qosmarkd`: see the library docs (`qosmark_linux`) and `linux/README.md`.

use qosmark_linux::{parse_args, run, Command, USAGE};
use std::process::ExitCode;

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("qosmarkd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(config)) => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qosmarkd: error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("qosmarkd: error: {e}");
            ExitCode::from(2)
        }
    }
}
