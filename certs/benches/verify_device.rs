//! Benchmark of TrustStore::verify_device (written in the benchmark step).

fn main() {}
