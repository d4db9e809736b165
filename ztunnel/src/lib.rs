//! ztunnel.
