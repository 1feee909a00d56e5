//! The `fusebox` binary: a thin shell over [`fusebox::cli`].

fn main() {
    std::process::exit(fusebox::cli::main());
}
