//! The kernel side: namespaces, links, addresses, routes, sysctls, traffic control.
//!
//! Everything here talks netlink through `rtnetlink`; nothing runs `ip` or `tc`.

pub mod addr;
pub mod link;
pub mod names;
pub mod netns;
pub mod route;
pub mod sysctl;
pub mod tc;
