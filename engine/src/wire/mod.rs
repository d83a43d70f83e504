//! PLACEHOLDER (skeleton): packet views. Replaced by the real implementation.
