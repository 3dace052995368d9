//! The QEMU driver: everything Corral knows about talking to one QEMU process.
//!
//! - [`qmp`]: an async QMP client (id-matched replies, event stream, timeouts).

pub mod qmp;
