//! Thin entry point; everything lives in the library.

fn main() {
    std::process::exit(falcon_migrate::cli::run_migrate());
}
