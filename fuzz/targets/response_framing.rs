//! AFL++ target: `fusebox::fuzz::framing::check` on each input (fusebox's framing against the
//! fields' raw bytes and hyper's client).
fn main() {
    afl::fuzz!(|data: &[u8]| fusebox::fuzz::framing::check(data));
}
