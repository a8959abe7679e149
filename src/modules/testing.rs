//! Helpers shared by the modules' unit tests.

use super::{BuildFn, ProbeResult, Resolve, Resource};

/// A repo with no templates and no files.
pub struct NoRepo;

impl Resolve for NoRepo {
    fn template(&mut self, _: &str) -> Result<String, String> {
        Err("none".into())
    }
    fn file(&mut self, _: &str) -> Result<Vec<u8>, String> {
        Err("none".into())
    }
}

/// Builds a resource from parameters that must be valid.
pub fn built(build: BuildFn, v: serde_json::Value) -> Box<dyn Resource> {
    match build(v, &mut NoRepo) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

/// A probe that printed `s` and exited 0.
pub fn out(s: &str) -> ProbeResult {
    ProbeResult {
        stdout: s.as_bytes().to_vec(),
        ..Default::default()
    }
}
