//! The sandbox's command line alone, for tests: `ftl-sandbox [runsc flags] COMMAND`.

fn main() {
    std::process::exit(ftl_sandbox::cli::main(std::env::args_os().collect()));
}
