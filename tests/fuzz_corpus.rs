//! Replays the fuzz corpus (`fuzz/corpus/<target>/`: the seeds, and every input a fuzzer
//! found a crash with) through the fuzz targets' entry points, so that a finding, once fixed,
//! stays fixed without AFL++ installed (docs/ARCHITECTURE.md §12).

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in fusebox::fuzz::TARGETS {
        let dir = corpus.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        inputs.sort();
        assert!(
            inputs.len() >= 3,
            "{name}: too few seeds in {}",
            dir.display()
        );
        for input in inputs {
            let data = std::fs::read(&input).expect("corpus input");
            let replayed = std::panic::catch_unwind(|| target(&data));
            assert!(replayed.is_ok(), "{name}: {} panics", input.display());
        }
    }
}
