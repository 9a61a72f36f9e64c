fn main() -> std::process::ExitCode {
    meterd::cli::main()
}
