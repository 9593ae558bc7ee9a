//! Fixtures shared by the chaos test files of one concern (one place, not one copy per test
//! file). The harness every chaos test uses (stand-ins, the daemon launcher, the API server
//! emulator) is the `chaos_tests` library; what sits here serves one group of test files:
//! `deploy` (the rendered manifests, for `tests/deploy_*.rs`) and `leader` (two replicas with
//! leader election on the emulator, for `tests/leader_*.rs`) and `otlp` (a real OTLP receiver,
//! for `tests/traces.rs`) and `oncall` (three identities and the CLI as each, for
//! `tests/residency*.rs`) and `vantage` (two replicas exchanging verdicts, for
//! `tests/vantages.rs`).
#![allow(dead_code)] // each test binary uses its own part of the fixtures
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod deploy;
pub mod leader;
pub mod oncall;
pub mod otlp;
pub mod vantage;
