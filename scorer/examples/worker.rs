//! A standalone scoring worker, for trying the Flight API by hand (the product binary is
//! `lakescore scorer`):
//!
//! ```text
//! cargo run -p lakescore-scorer --example worker -- MODEL_SOURCE [ADDR] [STORAGE_ROOT]
//! ```
//!
//! MODEL_SOURCE is a registry URL or `dir:///path`; ADDR defaults to 127.0.0.1:8815.

use lakescore_scorer::{serve, ScorerConfig};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(source) = args.next() else {
        eprintln!("usage: worker MODEL_SOURCE [ADDR] [STORAGE_ROOT]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8815".to_string());
    let mut config = ScorerConfig::new(source);
    if let Some(root) = args.next() {
        config.storage_roots = vec![root];
    }
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("listening on {addr}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = serve(config, listener, shutdown).await {
        eprintln!("worker failed: {e}");
        std::process::exit(1);
    }
}
