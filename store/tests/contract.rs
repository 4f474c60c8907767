//! One contract suite run against every available backend: redb, simulated, and FoundationDB
//! when `FDB_CLUSTER_FILE` names a cluster (feature `fdb`). Fault-injection tests of the
//! simulated store follow the suite.

#[macro_use]
mod contract_suite;

use gpve_store::Store;

/// A store under test and whatever keeps it alive (a temp dir).
struct Harness {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

fn redb_store() -> Option<Harness> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_redb(&dir.path().join("store.redb")).expect("open redb");
    Some(Harness {
        store,
        _dir: Some(dir),
    })
}

fn sim_store() -> Option<Harness> {
    let (store, _control) = Store::simulated(gpve_store::SimFaults::default());
    Some(Harness { store, _dir: None })
}

#[cfg(feature = "fdb")]
fn fdb_store() -> Option<Harness> {
    let Some(path) = std::env::var_os("FDB_CLUSTER_FILE") else {
        println!("skipped: FDB_CLUSTER_FILE not set");
        return None;
    };
    let store = Store::open_fdb(Some(std::path::Path::new(&path))).expect("open FoundationDB");
    Some(Harness { store, _dir: None })
}

contract_suite!(redb, redb_store());
contract_suite!(simulated, sim_store());
#[cfg(feature = "fdb")]
contract_suite!(fdb, fdb_store());
