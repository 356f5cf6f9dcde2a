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
    // The seed folders name the targets for tools/fuzz/run.sh: they must be exactly these.
    let mut folders: Vec<String> = std::fs::read_dir(inputs_dir("seeds", ""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut names: Vec<&str> = TARGETS.to_vec();
    names.sort();
    assert_eq!(folders, names);
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
fn gguf_regressions_are_refused() {
    // AFL++ found headers whose dimensions' product overflows (the tensor's size wrapped
    // around in release builds and passed as small) and a `general.alignment` of 0 (candle's
    // reader divides by it): each must now be refused with an error.
    let inputs = files(&inputs_dir("regressions", "gguf"));
    assert!(!inputs.is_empty());
    for (i, input) in inputs.iter().enumerate() {
        assert!(!run("gguf", input), "gguf regression {i} is accepted");
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

#[test]
fn safetensors_offsets_near_the_top_of_u64_are_refused() {
    // `end + 8 + header` used to wrap in release builds (and panic with overflow checks),
    // so a header claiming data up to u64::MAX − 4 passed the bounds check.
    let path = inputs_dir("regressions", "safetensors").join("offset-near-u64-max");
    let e = sprout_models::flux::inspect::safetensors_header(&path)
        .expect_err("a tensor past the end of the file is refused");
    assert!(e.to_string().contains("lies outside the file"), "{e}");
}
