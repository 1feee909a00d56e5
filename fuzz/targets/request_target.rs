//! AFL++ target: `fusebox::fuzz::request_target` on each input.
fn main() {
    afl::fuzz!(|data: &[u8]| fusebox::fuzz::request_target(data));
}
