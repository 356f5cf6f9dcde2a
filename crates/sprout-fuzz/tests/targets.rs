//! Every target on its committed seeds and regressions, then a short deterministic mutation
//! budget (`SPROUT_FUZZ_EXECS` inputs per target, 3000 by default): no input may panic.

use std::path::Path;

use sprout_fuzz::mutate::{mutate, Rng};
use sprout_fuzz::{inputs_dir, run, TARGETS};

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = rd
        .map(|e| e.expect("a readable folder").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("a readable input"))
        .collect()
}

#[test]
fn every_seed_is_accepted() {
    // A seed that its target refuses would leave the fuzzer stuck at the first check.
    for t in TARGETS {
        let seeds = files(&inputs_dir("seeds", t));
        assert!(!seeds.is_empty(), "{t}: no seeds");
        for (i, s) in seeds.iter().enumerate() {
            assert!(run(t, s), "{t}: seed {i} is refused");
        }
    }
}

#[test]
fn regressions_return() {
    for t in TARGETS {
        for input in files(&inputs_dir("regressions", t)) {
            run(t, &input);
        }
    }
}

#[test]
fn edge_inputs_return() {
    for t in TARGETS {
        for input in [&b""[..], b"\0", b"{", b"GGUF", &[0xff; 16]] {
            assert!(!run(t, input), "{t}: {input:?} accepted");
        }
    }
}

#[test]
fn mutation_budget() {
    let execs: usize = std::env::var("SPROUT_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    for (k, t) in TARGETS.iter().enumerate() {
        let seeds = files(&inputs_dir("seeds", t));
        let mut rng = Rng::new(0x5eed + k as u64);
        let mut accepted = 0;
        for _ in 0..execs {
            let a = &seeds[rng.below(seeds.len())];
            let b = &seeds[rng.below(seeds.len())];
            let input = mutate(a, b, &mut rng);
            accepted += run(t, &input) as usize;
        }
        eprintln!("{t}: {execs} mutated inputs, {accepted} accepted");
    }
}
