fn main() -> std::process::ExitCode {
    plumb::cli::main()
}
