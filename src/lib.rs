//! holdfast: a CNI plugin that keeps giving pods networks when the Kubernetes API is unreachable.
//!
//! Layout: [`cni`] is the protocol, [`dataplane`] the kernel, `ipam` addresses, `state` local
//! records, `cluster` the API and its cache, `plugin` the verbs that tie them together, [`cli`]
//! the process edge. Only what the binary and the integration tests use is public, so the
//! compiler finds dead code everywhere else.

pub mod cli;
mod cluster;
pub mod cni;
pub mod dataplane;
mod failpoint;
mod ipam;
mod plugin;
mod proc;
mod routing;
pub mod runtime;
mod state;
