//! AFL++ target: `fusebox::fuzz::retry_after` on each input.
fn main() {
    afl::fuzz!(|data: &[u8]| fusebox::fuzz::retry_after(data));
}
