//! Who this node is: its node id and uuid, kept in the store's metadata,
//! the one place they live (the mesh, backups and the admin socket read
//! them from here).

use super::Store;
use crate::ids::NodeId;

impl Store {
    /// The node's uuid, once it has one.
    pub fn node_uuid(&self) -> Result<Option<String>, String> {
        match self.meta_get("uuid").map_err(|e| e.to_string())? {
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| "corrupt node uuid in the data directory".to_string()),
            None => Ok(None),
        }
    }

    pub fn set_node_uuid(&self, uuid: &str) -> Result<(), String> {
        self.meta_put("uuid", uuid.as_bytes())
            .map_err(|e| e.to_string())
    }

    /// The node's id in its cluster (1 for a node on its own), once chosen.
    pub fn node_id(&self) -> Result<Option<NodeId>, String> {
        match self.meta_get("node").map_err(|e| e.to_string())? {
            Some(v) if v.len() == 2 => Ok(Some(u16::from_be_bytes([v[0], v[1]]))),
            Some(_) => Err("corrupt node id in the data directory".into()),
            None => Ok(None),
        }
    }

    pub fn set_node_id(&self, node: NodeId) -> Result<(), String> {
        self.meta_put("node", &node.to_be_bytes())
            .map_err(|e| e.to_string())
    }
}
