//! The fuzz targets' smoke test (part of `make unit`): every target over its seed corpus
//! (`corpus/<target>/`) and over a bounded number of mutations of it, drawn from a fixed seed,
//! so each build checks the invariants `make fuzz` hunts for with libFuzzer.
//!
//! The seed corpus is written from each target's `seeds()`: after changing them, run
//! `WARDEN_FUZZ_WRITE_SEEDS=1 cargo test -p warden-fuzz` (files of inputs that are no longer
//! seeds stay: they may be crash reproducers).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warden_fuzz::{Target, TARGETS};

/// Mutated inputs per target: a few thousand in all, well under a minute in a debug build.
const MUTATIONS: usize = 1000;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_dir(target: &Target) -> PathBuf {
    manifest_dir().join("corpus").join(target.name)
}

fn seed_file(seed: &[u8]) -> String {
    let digest = Sha256::digest(seed);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("seed-{hex}")
}

fn target(name: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.name == name).expect("a target")
}

/// Runs `input` through `target`: the outcome it reached. A panic fails the test with the
/// input, saved for `cargo fuzz run <target> <file>`.
fn run(target: &Target, input: &[u8], what: &str) -> &'static str {
    let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let Ok(outcome) = outcome else {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}-{}", target.name, seed_file(input)));
        std::fs::write(&file, input).unwrap();
        panic!(
            "{} broke an invariant on {what}, saved as {}: {:?}",
            target.name,
            file.display(),
            String::from_utf8_lossy(input)
        );
    };
    assert!(
        target.outcomes.contains(&outcome),
        "{} reached an undeclared outcome {outcome}",
        target.name
    );
    outcome
}

/// The corpus on disk, after checking (or, with `WARDEN_FUZZ_WRITE_SEEDS=1`, writing) that it
/// holds every seed.
fn corpus(target: &Target) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let write = std::env::var_os("WARDEN_FUZZ_WRITE_SEEDS").is_some();
    for seed in (target.seeds)() {
        let file = dir.join(seed_file(&seed));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &seed).unwrap();
        }
        assert_eq!(
            std::fs::read(&file).ok().as_deref(),
            Some(seed.as_slice()),
            "{} is not the seed: run WARDEN_FUZZ_WRITE_SEEDS=1 cargo test -p warden-fuzz",
            file.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// splitmix64: a fixed-seed source of mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the parsers under test: separators, escapes, dot segments, numbers
/// at the edges, prefixes.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b".",
    b"/",
    b"\\",
    b"%",
    b"%2e",
    b"%2E",
    b"..",
    b"\"",
    b"=",
    b";",
    b"&",
    b"?",
    b"#",
    b"@",
    b":",
    b"0",
    b"-1",
    b"9223372036854775807",
    b"-8334632851200",
    b"\0",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"null",
    b"true",
    b" ",
    b"\t",
    b"\r\n",
    b"\xc3\xa9",
    b"\xff",
    b"w1.",
    b"Bearer ",
    b"http://",
    b"https://",
    b":443",
    b":80",
    b"__Host-",
    b"warden_app_",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 | 3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            4 => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at..end.max(at));
            }
            5 => {
                let end = (at + 1 + rng.below(32)).min(input.len());
                let chunk = input[at..end.max(at)].to_vec();
                input.splice(at..at, chunk);
            }
            _ => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let end = (from + 1 + rng.below(64)).min(other.len());
                input.splice(at..at, other[from..end.max(from)].iter().copied());
            }
        }
    }
    input
}

fn holds(name: &str) {
    let target = target(name);
    let corpus = corpus(target);
    assert!(!corpus.is_empty(), "{name} has no seed corpus");
    let reached: Vec<&str> = corpus
        .iter()
        .enumerate()
        .map(|(i, input)| run(target, input, &format!("corpus file {i}")))
        .collect();
    // The seeds reach every outcome: the target judges real decisions, not only refusals.
    for outcome in target.outcomes {
        assert!(
            reached.contains(outcome),
            "no seed of {name} reaches {outcome}"
        );
    }
    let mut rng = Rng(Sha256::digest(name.as_bytes())[..8]
        .iter()
        .fold(0, |a, b| a << 8 | u64::from(*b)));
    for i in 0..MUTATIONS {
        let input = mutate(&mut rng, &corpus);
        run(target, &input, &format!("mutation {i}"));
    }
}

macro_rules! smoke {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn holds_its_invariants_on_its_seeds_and_their_mutations() {
                    super::holds(stringify!($name));
                }
            }
        )*

        #[test]
        fn every_target_has_a_smoke_test_a_binary_and_a_seed_corpus() {
            let tested = [$(stringify!($name)),*];
            let manifest = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).unwrap();
            for t in TARGETS {
                assert!(tested.contains(&t.name), "{} has no smoke test", t.name);
                let binary = manifest_dir().join("fuzz_targets").join(format!("{}.rs", t.name));
                assert!(binary.is_file(), "{} has no fuzz_targets file", t.name);
                assert!(manifest.contains(&format!("name = \"{}\"", t.name)), "{} has no [[bin]]", t.name);
                assert!(corpus_dir(t).is_dir(), "{} has no seed corpus", t.name);
            }
            let binaries = std::fs::read_dir(manifest_dir().join("fuzz_targets")).unwrap().count();
            assert_eq!(binaries, TARGETS.len(), "a fuzz_targets file without a target");
        }
    };
}

smoke!(
    inspect_body,
    sse_tools_filter,
    bearer_token,
    session_id,
    app_cookies_and_callback,
    return_to_and_redirect_url,
    authority_matching,
    id_token_and_userinfo,
    internal_api_bodies,
    plugin_config,
    upstream_metadata,
);
