//! The `syncd` daemon and its control commands.

fn main() {
    std::process::exit(syncd::cli::main());
}
