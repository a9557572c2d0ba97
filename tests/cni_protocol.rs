//! The CNI protocol edge: environment, versions, error JSON. These checks fail before anything
//! is changed, so they need no privileges.

mod common;
use common::run_plain;
use serde_json::{Value, json};

fn base(cmd: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", "abc123".into()),
        ("CNI_NETNS", "/var/run/netns/none".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/usr/lib/cni".into()),
    ]
}

fn run(env: &[(&'static str, String)], stdin: &str) -> common::Run {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_plain(&e, stdin)
}

fn set(env: &mut Vec<(&'static str, String)>, k: &'static str, v: &str) {
    env.retain(|(kk, _)| *kk != k);
    env.push((k, v.to_string()));
}

const CONF: &str = r#"{"cniVersion":"1.1.0","name":"n","type":"holdfast","stateDir":"/nonexistent/hf","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}"#;

#[test]
fn version_lists_supported_versions() {
    let r = run(&[("CNI_COMMAND", "VERSION".into())], "");
    assert_eq!(r.code, 0);
    let j = r.json();
    assert_eq!(j["cniVersion"], "1.1.0");
    assert_eq!(
        j["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn no_command_prints_about_on_stderr_only() {
    let r = run(&[], "");
    assert_eq!(r.code, 0);
    assert!(r.stdout.is_empty(), "stdout must stay empty: {}", r.stdout);
    assert!(r.stderr.contains("holdfast"));
    assert!(r.stderr.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
}

#[test]
fn missing_env_is_code_4_naming_all() {
    for (cmd, missing) in [
        ("ADD", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
        ("CHECK", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
        ("DEL", "CNI_CONTAINERID,CNI_IFNAME,CNI_PATH"),
        ("GC", "CNI_PATH"),
        ("STATUS", "CNI_PATH"),
    ] {
        let r = run(&[("CNI_COMMAND", cmd.into())], CONF);
        r.err(4, &format!("[{missing}]"));
    }
    let r = run(&[("CNI_COMMAND", "FROB".into())], CONF);
    r.err(4, "FROB");
}

#[test]
fn invalid_ids_are_code_4_on_every_verb() {
    for cmd in ["ADD", "DEL", "CHECK"] {
        for bad in ["../../etc", "-x", "a b", "a/b"] {
            let mut e = base(cmd);
            set(&mut e, "CNI_CONTAINERID", bad);
            run(&e, CONF).err(4, "CNI_CONTAINERID");
        }
        for bad in ["a/b", "..", "0123456789abcdef", "a:b", "a b"] {
            let mut e = base(cmd);
            set(&mut e, "CNI_IFNAME", bad);
            run(&e, CONF).err(4, "CNI_IFNAME");
        }
    }
}

#[test]
fn config_errors_have_their_codes() {
    let e = base("ADD");
    run(&e, "{not json").err(6, "network config");
    run(&e, r#"{"cniVersion":"1.0.0","type":"holdfast"}"#).err(7, "name");
    run(&e, r#"{"cniVersion":"0.2.0","name":"n"}"#).err(1, "0.2.0");
    run(&e, r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#).err(7, "mtu");
    run(
        &e,
        r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/33"}]]}}"#,
    )
    .err(7, "subnet");
    run(
        &e,
        r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.5/24"}]]}}"#,
    )
    .err(7, "host bits");
    run(&e, r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.9.0.1"}]]}}"#)
        .err(7, "rangeStart");
    run(
        &e,
        r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"usePodCidr"}]]}}"#,
    )
    .err(7, "usePodCidr");
    let j = run(&e, r#"{"cniVersion":"0.4.0","name":"n"}"#).json();
    // The error is written in the config's version.
    assert_eq!(j["cniVersion"], "0.4.0");
}

#[test]
fn verbs_need_their_minimum_version() {
    let old = r#"{"cniVersion":"0.3.1","name":"n","type":"holdfast"}"#;
    run(&base("CHECK"), old).err(1, "CHECK");
    let v100 = r#"{"cniVersion":"1.0.0","name":"n","type":"holdfast"}"#;
    run(
        &[("CNI_COMMAND", "STATUS".into()), ("CNI_PATH", "/x".into())],
        v100,
    )
    .err(1, "STATUS");
    run(
        &[("CNI_COMMAND", "GC".into()), ("CNI_PATH", "/x".into())],
        v100,
    )
    .err(1, "GC");
}

#[test]
fn cni_args_unknown_keys_need_ignore_unknown() {
    let mut e = base("ADD");
    set(&mut e, "CNI_ARGS", "FOO=bar;K8S_POD_NAME=web");
    run(&e, CONF).err(4, "FOO");
    // With IgnoreUnknown the args pass and ADD proceeds to the netns check (which fails here).
    set(
        &mut e,
        "CNI_ARGS",
        "K8S_POD_NAME=web;FOO=bar;IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
    );
    run(&e, CONF).err(4, "CNI_NETNS");
}

#[test]
fn netns_is_validated_before_anything() {
    let mut e = base("ADD");
    set(&mut e, "CNI_NETNS", "/proc/self/status");
    run(&e, CONF).err(4, "not a network namespace");
    set(&mut e, "CNI_NETNS", "relative/path");
    run(&e, CONF).err(4, "absolute");
    set(&mut e, "CNI_NETNS", "/proc/self/ns/net");
    run(&e, CONF).err(4, "own network namespace");
}

#[test]
fn stdout_carries_only_json() {
    let r = run(&base("ADD"), "{not json");
    let v: Value = serde_json::from_str(&r.stdout).expect("stdout is exactly one JSON document");
    assert!(v.is_object());
}
