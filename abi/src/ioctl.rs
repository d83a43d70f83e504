//! (see crate docs)
