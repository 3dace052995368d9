/// Errors of the network layer. `Invalid` and `Unsupported` are the user's to fix
/// (the daemon maps them to 400/409 with the field and hint); the rest are host failures.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The request does not fit this host (a bridge that does not exist, a subnet in use).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
        hint: String,
    },
    /// The host cannot do this (no VLAN filtering in the kernel, a tool missing).
    #[error("{message}")]
    Unsupported { message: String, hint: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool (`nft`, `ip`, `dnsmasq`, `passt`) failed; `stderr` is its own words.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}
