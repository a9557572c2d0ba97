//! A minimal CRI client for the containerd end-to-end test: it does what the kubelet does to start
//! and stop a pod sandbox (Debian ships no crictl). Every call has a deadline.
//!
//!   cri SOCKET run NAME NAMESPACE UID [ANNOTATION=VALUE ...]   prints the sandbox ID
//!   cri SOCKET ip ID                                           prints the pod's IP
//!   cri SOCKET state ID                     prints the sandbox's state (SANDBOX_READY, ...)
//!   cri SOCKET create SANDBOX NAME NAMESPACE UID IMAGE CMD...  prints the container ID
//!   cri SOCKET start CONTAINER
//!   cri SOCKET cstate CONTAINER             prints the container's state (CONTAINER_RUNNING, ...)
//!   cri SOCKET stop ID | remove ID
//!   cri SOCKET list                                            prints one sandbox ID a line
//!   cri SOCKET status           prints `NetworkReady=true` or `NetworkReady=false REASON: MESSAGE`

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxPodSandboxConfig,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StatusRequest, StopPodSandboxRequest,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Long enough for containerd to start runc and run the CNI chain on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

type Client = RuntimeServiceClient<Channel>;

async fn connect(socket: String) -> Result<Client, String> {
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://[::1]:1")
        .connect_timeout(Duration::from_secs(5))
        .timeout(DEADLINE)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// The pod's config as the kubelet sends it: on RunPodSandbox, and again with each CreateContainer.
fn sandbox_config(
    name: &str,
    namespace: &str,
    uid: &str,
    annotations: HashMap<String, String>,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        annotations,
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// `run NAME NAMESPACE UID [K=V ...]`: RunPodSandbox with those annotations; `Err(None)` is a
/// usage error.
async fn run_pod(c: &mut Client, args: &[String]) -> Result<String, Option<String>> {
    let (Some(name), Some(namespace), Some(uid)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err(None);
    };
    let annotations: HashMap<String, String> = args[4..]
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config(name, namespace, uid, annotations)),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| Some(format!("RunPodSandbox: {}: {}", e.code(), e.message())))?;
    Ok(r.into_inner().pod_sandbox_id)
}

/// `create SANDBOX NAME NAMESPACE UID IMAGE CMD...`: CreateContainer in a sandbox made by `run`
/// with NAME NAMESPACE UID (the container is named NAME too); `Err(None)` is a usage error.
async fn create_container(c: &mut Client, args: &[String]) -> Result<String, Option<String>> {
    let [_, sandbox, name, namespace, uid, image, command @ ..] = args else {
        return Err(None);
    };
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        command: command.to_vec(),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    };
    let r = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config(name, namespace, uid, HashMap::new())),
        })
        .await
        .map_err(|e| Some(format!("CreateContainer: {}: {}", e.code(), e.message())))?;
    Ok(r.into_inner().container_id)
}

async fn sandbox_status(c: &mut Client, id: String) -> Result<PodSandboxStatus, String> {
    c.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id,
        verbose: false,
    })
    .await
    .map_err(|e| format!("PodSandboxStatus: {}: {}", e.code(), e.message()))?
    .into_inner()
    .status
    .ok_or_else(|| "PodSandboxStatus: no status".to_string())
}

/// The state of a container as the kubelet reads it (CONTAINER_RUNNING, ...).
async fn container_state(c: &mut Client, id: String) -> Result<String, String> {
    let r = c
        .container_status(ContainerStatusRequest {
            container_id: id,
            verbose: false,
        })
        .await
        .map_err(|e| format!("ContainerStatus: {}: {}", e.code(), e.message()))?;
    let state = r
        .into_inner()
        .status
        .ok_or_else(|| "ContainerStatus: no status".to_string())?
        .state;
    Ok(ContainerState::try_from(state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| format!("state {state}")))
}

/// The runtime's NetworkReady condition, as the kubelet reads it from its `Status` poll (a
/// containerd 2.x asks the CNI plugins for STATUS on each).
async fn network_ready(c: &mut Client) -> Result<String, String> {
    let r = c
        .status(StatusRequest { verbose: false })
        .await
        .map_err(|e| format!("Status: {}: {}", e.code(), e.message()))?;
    let cond = r
        .into_inner()
        .status
        .into_iter()
        .flat_map(|s| s.conditions)
        .find(|c| c.r#type == "NetworkReady")
        .ok_or_else(|| "Status: no NetworkReady condition".to_string())?;
    Ok(match cond.status {
        true => "NetworkReady=true".to_string(),
        false => format!("NetworkReady=false {}: {}", cond.reason, cond.message),
    })
}

async fn run(mut c: Client, args: &[String]) -> Result<String, String> {
    let usage = || {
        "usage: cri SOCKET run NAME NAMESPACE UID [K=V ...] | ip ID | state ID \
         | create SANDBOX NAME NAMESPACE UID IMAGE CMD... | start ID | cstate ID | stop ID \
         | remove ID | list | status"
            .to_string()
    };
    let id = || args.get(1).cloned().ok_or_else(usage);
    let fail = |what: &str, e: tonic::Status| format!("{what}: {}: {}", e.code(), e.message());
    match args.first().map(String::as_str) {
        Some("run") => run_pod(&mut c, args)
            .await
            .map_err(|e| e.unwrap_or_else(usage)),
        Some("ip") => sandbox_status(&mut c, id()?)
            .await?
            .network
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| "PodSandboxStatus: no network status".to_string()),
        Some("state") => {
            let state = sandbox_status(&mut c, id()?).await?.state;
            Ok(PodSandboxState::try_from(state)
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_else(|_| format!("state {state}")))
        }
        Some("create") => create_container(&mut c, args)
            .await
            .map_err(|e| e.unwrap_or_else(usage)),
        Some("start") => {
            c.start_container(StartContainerRequest {
                container_id: id()?,
            })
            .await
            .map_err(|e| fail("StartContainer", e))?;
            Ok(String::new())
        }
        Some("cstate") => container_state(&mut c, id()?).await,
        Some("stop") => {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id()?,
            })
            .await
            .map_err(|e| fail("StopPodSandbox", e))?;
            Ok(String::new())
        }
        Some("remove") => {
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id()?,
            })
            .await
            .map_err(|e| fail("RemovePodSandbox", e))?;
            Ok(String::new())
        }
        Some("list") => {
            let r = c
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .map_err(|e| fail("ListPodSandbox", e))?;
            Ok(r.into_inner()
                .items
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Some("status") => network_ready(&mut c).await,
        _ => Err(usage()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, rest)) = args.split_first() else {
        eprintln!("usage: cri SOCKET COMMAND ...");
        std::process::exit(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cri: runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = rt.block_on(async {
        let c = connect(socket.clone()).await?;
        tokio::time::timeout(DEADLINE, run(c, rest))
            .await
            .map_err(|_| format!("no answer within {DEADLINE:?}"))?
    });
    match outcome {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
        }
        Err(e) => {
            eprintln!("cri: {e}");
            std::process::exit(1);
        }
    }
}
