//! AFL++ target: `fusebox::fuzz::policy` on each input.
fn main() {
    afl::fuzz!(|data: &[u8]| fusebox::fuzz::policy(data));
}
