//! One node's link to the shared simulated store: a second [`Backend`] over the same
//! in-memory engine that the simulation can cut (a network partition between the node and
//! the store). Every node has its own link; the checker reads through an uncut one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use gpve_store::simulated::{SimBackend, SimError};
use gpve_store::{Backend, BackendTxn, StoreError};

/// A cuttable view of the shared simulated backend.
pub struct LinkBackend {
    inner: Arc<SimBackend>,
    cut: Arc<AtomicBool>,
}

impl LinkBackend {
    /// A link over `inner`, cut while `cut` is set.
    pub fn new(inner: Arc<SimBackend>, cut: Arc<AtomicBool>) -> Self {
        LinkBackend { inner, cut }
    }
}

fn unreachable_if(cut: &AtomicBool) -> Result<(), StoreError> {
    if cut.load(Ordering::Relaxed) {
        Err(StoreError::Simulated(SimError::Unreachable))
    } else {
        Ok(())
    }
}

#[async_trait]
impl Backend for LinkBackend {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn begin(&self) -> Result<Box<dyn BackendTxn>, StoreError> {
        unreachable_if(&self.cut)?;
        Ok(Box::new(LinkTxn {
            inner: self.inner.begin().await?,
            cut: self.cut.clone(),
        }))
    }
}

/// A transaction that fails when its link is cut before it reads or commits (a cut in the
/// middle of a transaction is the common case of a partition).
struct LinkTxn {
    inner: Box<dyn BackendTxn>,
    cut: Arc<AtomicBool>,
}

#[async_trait]
impl BackendTxn for LinkTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        unreachable_if(&self.cut)?;
        self.inner.get(key).await
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        unreachable_if(&self.cut)?;
        self.inner.get_range(begin, end, limit, reverse).await
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.inner.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.inner.clear_range(begin, end);
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        unreachable_if(&self.cut)?;
        self.inner.commit().await
    }
}
