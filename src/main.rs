fn main() -> std::process::ExitCode {
    llmeval::cli::main()
}
