//! Processes started from a clean image: the zygote, forked by `init()` while
//! the node is still single-threaded and small.
//!
//! 1. [`zygote`]: the zygote process and the requests it serves.

pub(crate) mod zygote;
