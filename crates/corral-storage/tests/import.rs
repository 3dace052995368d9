#![allow(clippy::unwrap_used)]
//! The import library end to end: real images made with qemu-img, a scripted HTTP
//! server on 127.0.0.1, and OVAs built here.

#[path = "import/convert.rs"]
mod convert;
#[path = "import/fetch.rs"]
mod fetch;
#[path = "import/ova.rs"]
mod ova;
#[path = "import/util.rs"]
mod util;
