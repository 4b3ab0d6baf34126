pub mod chat;
pub mod echo_agent;
pub mod restore;
pub mod serve;
pub mod snapshots;
pub mod sweep;
pub mod sync;
pub mod token;
