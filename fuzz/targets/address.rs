//! AFL++ target: `fusebox::fuzz::address` on each input.
fn main() {
    afl::fuzz!(|data: &[u8]| fusebox::fuzz::address(data));
}
