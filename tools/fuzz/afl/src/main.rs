//! `sprout-afl TARGET`: AFL++'s persistent loop around one fuzz target.

fn main() {
    let target = std::env::args().nth(1).unwrap_or_default();
    if !sprout_fuzz::TARGETS.contains(&target.as_str()) {
        eprintln!("usage: sprout-afl TARGET (one of {:?})", sprout_fuzz::TARGETS);
        std::process::exit(2);
    }
    afl::fuzz!(|data: &[u8]| {
        sprout_fuzz::run(&target, data);
    });
}
