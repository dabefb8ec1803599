//! What a read of the speed layer's Redis state can fail with (its own file: the view state
//! reader shares it, and the read surface re-exports that reader).

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected redis reply: {0}")]
    Reply(#[from] redis::ParsingError),
    #[error("the view's speed state changed during the read (lost or rebuilding)")]
    StateChanged,
    #[error("{0} groups")]
    TooManyGroups(usize),
}
