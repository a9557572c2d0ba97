//! A conflist executor that drives plugins the way libcni does: each plugin's config is the
//! list's name and cniVersion plus its own keys, `runtimeConfig` for the capabilities it
//! declares, and the previous result; ADD and CHECK run in order, DEL in reverse.
#![allow(dead_code)]

use super::{BIN, Run, World};
use serde_json::Value;

pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub struct Chain<'a> {
    pub w: &'a World,
    pub list: Value,
    /// Capability name → runtime value (e.g. "bandwidth", "portMappings").
    pub runtime: Value,
}

impl Chain<'_> {
    fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().cloned().unwrap_or_default()
    }

    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut p = plugin.clone();
        p["name"] = self.list["name"].clone();
        p["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = self.runtime.get(cap)
                {
                    p["runtimeConfig"][cap] = v.clone();
                }
            }
        }
        if let Some(prev) = prev {
            p["prevResult"] = prev.clone();
        }
        p
    }

    fn bin(plugin: &Value) -> String {
        match plugin["type"].as_str().unwrap_or_default() {
            "holdfast" => BIN.to_string(),
            other => format!("{REFERENCE_DIR}/{other}"),
        }
    }

    fn exec(&self, plugin: &Value, cmd: &str, ids: (&str, &str, &str), conf: &Value) -> Run {
        let (cid, netns, ifname) = ids;
        self.w.exec(
            &Self::bin(plugin),
            cmd,
            conf,
            &[
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
            ],
        )
    }

    /// ADD through the chain; the failing plugin's output on error.
    pub fn add(&self, cid: &str, netns: &str, ifname: &str) -> Result<Value, (String, Run)> {
        let mut prev: Option<Value> = None;
        for p in self.plugins() {
            let conf = self.plugin_conf(&p, prev.as_ref());
            let r = self.exec(&p, "ADD", (cid, netns, ifname), &conf);
            if r.code != 0 {
                return Err((p["type"].to_string(), r));
            }
            prev = Some(r.json());
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through the chain, skipping plugin types in `skip`.
    pub fn check(
        &self,
        cid: &str,
        netns: &str,
        ifname: &str,
        result: &Value,
        skip: &[&str],
    ) -> Result<(), (String, Run)> {
        for p in self.plugins() {
            if skip.contains(&p["type"].as_str().unwrap_or_default()) {
                continue;
            }
            let conf = self.plugin_conf(&p, Some(result));
            let r = self.exec(&p, "CHECK", (cid, netns, ifname), &conf);
            if r.code != 0 {
                return Err((p["type"].to_string(), r));
            }
        }
        Ok(())
    }

    /// DEL through the chain in reverse.
    pub fn del(
        &self,
        cid: &str,
        netns: &str,
        ifname: &str,
        result: Option<&Value>,
    ) -> Result<(), (String, Run)> {
        for p in self.plugins().iter().rev() {
            let conf = self.plugin_conf(p, result);
            let r = self.exec(p, "DEL", (cid, netns, ifname), &conf);
            if r.code != 0 {
                return Err((p["type"].to_string(), r));
            }
        }
        Ok(())
    }
}
