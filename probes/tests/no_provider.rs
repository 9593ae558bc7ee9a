//! Runs in its own process, so no rustls CryptoProvider is installed here.

/// Without a process-wide CryptoProvider, http_client returns an error instead of letting reqwest panic.
#[test]
fn http_client_without_provider_is_an_error() {
    let err = failover_probes::http_client().expect_err("no provider installed");
    assert!(err.to_string().contains("CryptoProvider"), "{err}");
}
