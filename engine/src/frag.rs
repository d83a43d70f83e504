//! PLACEHOLDER (skeleton): first-fragment memory. Replaced by the real implementation.

/// Bounded memory of first fragments.
#[derive(Debug)]
pub(crate) struct FragmentCache;

impl FragmentCache {
    pub(crate) fn new(_slots: usize) -> Self {
        FragmentCache
    }
}
