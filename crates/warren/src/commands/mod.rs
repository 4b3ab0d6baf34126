pub mod echo_agent;
pub mod serve;
pub mod token;
