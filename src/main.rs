//! The `galley` binary: parses arguments, wires the library's stages together, prints.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
