//! The CNI protocol: versions, environment, configuration, results and errors.

pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use config::NetConf;
pub use env::{Command, Env};
pub use error::{Error, Result};
pub use result::CniResult;
pub use version::Version;
