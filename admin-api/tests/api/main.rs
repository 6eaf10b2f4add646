//! The admin API over a real socket against a real SQLite file.

mod anchor_overlap;
mod chain;
mod common;
mod console;
mod crl;
mod devices;
mod logins;
mod persistence;
mod pop;
mod robustness;
mod schema_fuzz;
mod server_cert;
mod storage_full;
mod tenant_lifecycle;
mod tenants;
mod trusted_certificates;
