//! AFL++ target: `fusebox::fuzz::response` on each input.
fn main() {
    afl::fuzz!(|data: &[u8]| fusebox::fuzz::response(data));
}
