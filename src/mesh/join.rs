//! Joining: who this node is before the hub starts (its id, chosen with a
//! peer's help when it joins), the members it remembers, and discovering
//! the cluster from a seed.

use super::*;

/// Who this node is in the cluster, decided before the hub starts.
pub struct Prepared {
    pub node: NodeId,
    pub(super) me: MemberInfo,
    pub(super) endpoint: quinn::Endpoint,
    pub(super) members_file: PathBuf,
    pub(super) known: Vec<MemberInfo>,
    pub(super) seeds: Vec<String>,
}

pub(super) fn meta_uuid(store: &Store) -> Result<String, String> {
    if let Some(uuid) = store.node_uuid()? {
        return Ok(uuid);
    }
    let uuid = format!("{:032x}", rand::random::<u128>());
    store.set_node_uuid(&uuid)?;
    Ok(uuid)
}

/// The node's uuid, if it has one yet.
/// The mesh settings a cluster member last ran with, remembered in its data
/// directory, so that a restart without flags rejoins instead of running
/// alone (and silently diverging).
pub fn remembered(data_dir: &Path) -> Option<(SocketAddr, Option<String>)> {
    let bytes = std::fs::read(data_dir.join("mesh").join("self.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) fn remember(data_dir: &Path, listen: SocketAddr, advertise: Option<&str>) {
    let path = data_dir.join("mesh").join("self.json");
    let ok = serde_json::to_vec(&(listen, advertise))
        .ok()
        .and_then(|b| std::fs::write(&path, b).ok());
    if ok.is_none() {
        tracing::warn!(path = %path.display(), "could not save the mesh settings");
    }
}

pub(super) fn load_members(path: &Path) -> Vec<MemberInfo> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<(NodeId, String, String)>>(&b).ok())
        .map(|v| {
            v.into_iter()
                .map(|(node, uuid, addr)| MemberInfo { node, uuid, addr })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn save_members(path: &Path, members: &[MemberInfo]) {
    let list: Vec<(NodeId, &str, &str)> = members
        .iter()
        .map(|m| (m.node, m.uuid.as_str(), m.addr.as_str()))
        .collect();
    let tmp = path.with_extension("tmp");
    let ok = serde_json::to_vec_pretty(&list)
        .ok()
        .and_then(|b| std::fs::write(&tmp, b).ok())
        .and_then(|_| std::fs::rename(&tmp, path).ok());
    if ok.is_none() {
        tracing::warn!(path = %path.display(), "could not save the member list");
    }
}

/// Set up this node's mesh identity: uuid, credentials, endpoint, and (on a
/// first start with `--join`) a node id no member uses.
pub async fn prepare(
    store: &Store,
    data_dir: &Path,
    settings: MeshSettings,
) -> Result<Prepared, String> {
    let uuid = meta_uuid(store)?;
    let creds = tls::node_credentials(data_dir, &uuid, settings.cluster_key.as_deref())
        .map_err(|e| e.to_string())?;
    let endpoint =
        tls::endpoint(&creds, settings.listen, settings.peer_timeout).map_err(|e| e.to_string())?;
    let bound = endpoint.local_addr().map_err(|e| e.to_string())?;
    let addr = match &settings.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => {
            return Err(format!(
            "--mesh-listen {bound} has no address peers can dial: give --mesh-advertise HOST:PORT"
        ))
        }
        None => bound.to_string(),
    };
    let members_file = data_dir.join("mesh").join("members.json");
    let known = load_members(&members_file);
    let mut me = MemberInfo {
        node: 0,
        uuid,
        addr,
    };
    let node = match (store.node_id()?, settings.node_id) {
        (Some(n), Some(want)) if n != want => {
            return Err(format!(
                "this data directory belongs to node {n}, not --node-id {want}"
            ))
        }
        (Some(n), _) => n,
        (None, Some(want)) => want,
        (None, None) if settings.join.is_empty() && known.is_empty() => 1,
        (None, None) => choose_node_id(&endpoint, &me, &settings.join).await?,
    };
    if node == 0 || node > MAX_NODE {
        return Err(format!("node ids run from 1 to {MAX_NODE}"));
    }
    store.set_node_id(node)?;
    remember(data_dir, settings.listen, settings.advertise.as_deref());
    me.node = node;
    Ok(Prepared {
        node,
        me,
        endpoint,
        members_file,
        known,
        seeds: settings.join,
    })
}

/// Ask the seeds who is in the cluster and take the lowest free node id.
pub(super) async fn choose_node_id(
    endpoint: &quinn::Endpoint,
    me: &MemberInfo,
    seeds: &[String],
) -> Result<NodeId, String> {
    let mut warned = false;
    loop {
        for seed in seeds {
            match discover(endpoint, seed, me).await {
                Ok((_, Some(offer))) => return Ok(offer),
                Ok((_, None)) => return Err(format!("{seed} offered no node id")),
                Err(e) if !warned => {
                    tracing::warn!(%seed, error = %e, "cannot reach the cluster to join it; retrying");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} has no address"))
}

pub(super) async fn connect(
    endpoint: &quinn::Endpoint,
    addr: &str,
) -> Result<quinn::Connection, String> {
    let sa = resolve(addr).await?;
    let connecting = endpoint
        .connect(sa, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("{addr}: handshake timed out"))?
        .map_err(|e| format!("{addr}: {e}"))
}

pub(super) async fn read_timeout(recv: &mut quinn::RecvStream) -> Result<Frame, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read(recv)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("closed".into()),
        Ok(Ok(Some(f))) => Ok(f),
    }
}

/// One question to a seed: who are the members (itself included), and (if
/// we have no id yet) which id should we take?
pub(super) async fn discover(
    endpoint: &quinn::Endpoint,
    seed: &str,
    me: &MemberInfo,
) -> Result<(Vec<MemberInfo>, Option<NodeId>), String> {
    let conn = connect(endpoint, seed).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = Frame::Hello {
        version: wire::VERSION,
        node: me.node,
        uuid: me.uuid.clone(),
        addr: me.addr.clone(),
        members: Vec::new(),
        discovery: true,
        start: Vec::new(),
    };
    wire::write(&mut send, &hello)
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_timeout(&mut recv).await;
    conn.close(0u32.into(), b"done");
    match answer? {
        Frame::Welcome { members, offer, .. } => Ok((members, offer)),
        Frame::Refused { reason } => Err(format!("refused: {reason}")),
        other => Err(format!("unexpected answer {other:?}")),
    }
}
