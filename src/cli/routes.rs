//! `holdfast routes apply [--conf PATH]`: re-applies the persisted peer table (SPEC §9) now,
//! without the API: what a host boot unit runs before the kubelet. `holdfast routes clear`:
//! removes every route, device and table routing made (what an uninstall runs).

use super::{NAME, conf_arg, conffile, logging};
use crate::routing;

pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("apply") => apply(&args[1..]),
        Some("clear") if args.len() == 1 => clear(),
        _ => {
            eprintln!("usage: {NAME} routes apply [--conf PATH] | {NAME} routes clear");
            2
        }
    }
}

fn apply(args: &[String]) -> i32 {
    let (path, _) = match conf_arg(args, &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{NAME} routes apply: {e}");
            return 2;
        }
    };
    let loaded = conffile::load(path.as_deref()).and_then(|(f, c)| {
        let node = routing::node_name(c.kubernetes.as_ref())?;
        Ok((f, c, node))
    });
    let (file, conf, node) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{NAME} routes apply: {e}");
            return 1;
        }
    };
    logging::init(conf.log_file.as_deref(), conf.log_level.as_str());
    let done = crate::runtime::block_on(async {
        let host = crate::dataplane::Host::connect()?;
        routing::apply_from_disk(&host, &conf.routing, &conf.state_dir, &node).await
    });
    match done {
        Ok(None) => {
            println!(
                "no peer table in {} yet (config {}): nothing to apply",
                routing::table::path(&conf.state_dir).display(),
                file.display()
            );
            0
        }
        Ok(Some(out)) => {
            println!(
                "mode {}: {} peers, routes {} in place, {} placed, {} removed; {} neighbour/FDB entries set, {} removed",
                conf.routing.mode.as_str(),
                out.peers,
                out.routes_in_place,
                out.routes_replaced,
                out.routes_removed,
                out.entries_set,
                out.entries_removed
            );
            for p in &out.problems {
                eprintln!("  {p}");
            }
            i32::from(!out.problems.is_empty())
        }
        Err(e) => {
            eprintln!("{NAME} routes apply: {e}");
            1
        }
    }
}

fn clear() -> i32 {
    logging::init(None, "info");
    let done = crate::runtime::block_on(async {
        let host = crate::dataplane::Host::connect()?;
        routing::clear(&host).await
    });
    match done {
        Ok(out) => {
            println!(
                "removed {} of holdfast's routes, its VXLAN device and masquerade tables",
                out.routes_removed
            );
            for p in &out.problems {
                eprintln!("  {p}");
            }
            i32::from(!out.problems.is_empty())
        }
        Err(e) => {
            eprintln!("{NAME} routes clear: {e}");
            1
        }
    }
}
