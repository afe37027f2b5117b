//! What [`load`](crate::load) tells whoever shows its progress. lynload draws nothing itself: a library
//! has no terminal of its own, and its other users (the shim's `lynshim bench`) want no bar.

/// Told how many trace files there are and as each one is read (from several threads at once).
pub trait Progress: Sync {
    /// `files` trace files were found and are about to be read.
    fn begin(&self, files: usize);
    /// One more file has been read.
    fn advance(&self);
    /// Every file has been read.
    fn end(&self);
}
