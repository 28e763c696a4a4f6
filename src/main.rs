//! The `bazaar` binary: see `bazaar --help`.

fn main() -> std::process::ExitCode {
    bazaar::run()
}
