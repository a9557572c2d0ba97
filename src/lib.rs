//! holdfast: a CNI plugin that keeps giving pods networks when the Kubernetes API is unreachable.
//!
//! Layout: [`cni`] is the protocol, [`dataplane`] the kernel, [`ipam`] addresses, [`state`]
//! local records, [`plugin`] the verbs that tie them together, [`cli`] the process edge.

pub mod cli;
pub mod cluster;
pub mod cni;
pub mod dataplane;
pub mod failpoint;
pub mod ipam;
pub mod plugin;
pub mod runtime;
pub mod state;
