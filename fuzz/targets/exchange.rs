//! AFL++ target: `fusebox::fuzz::exchange::exchange` on each input (fusebox's own HTTP/1.1
//! client against a scripted upstream on loopback: early answers, the read-ahead, reuse).
fn main() {
    afl::fuzz!(|data: &[u8]| fusebox::fuzz::exchange::exchange(data));
}
