fn main() -> std::process::ExitCode {
    meterd::cli::main()
}

// The build script's commit lookup, tested as ordinary code.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;
