//! The node's hardware as far as placement needs it: cores with their processing units (PUs,
//! hardware threads), package, NUMA node and last-level cache, discovered with hwloc.

use crate::error::{Error, ErrorKind, Result};

/// One core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Core {
    /// hwloc's logical index of the core (0..cores, in topology order).
    pub id: usize,
    /// Package (socket) logical index.
    pub package: usize,
    /// NUMA node OS index.
    pub numa: usize,
    /// Last-level (L3) cache logical index, or the package if there is none.
    pub l3: usize,
    /// OS indexes of the core's PUs (what `sched_setaffinity` and `taskset` speak).
    pub pus: Vec<usize>,
}

/// The cores of one node, in topology order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Every core of the node.
    pub cores: Vec<Core>,
}

impl Topology {
    /// Reads the node's topology with hwloc.
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::Runtime`] if hwloc cannot load the topology.
    #[doc(alias = "hwloc_topology_load")]
    pub fn discover() -> Result<Topology> {
        use hwloc2::ObjectType;
        let err =
            |m: &str| Error::new(ErrorKind::Runtime, "Topology::discover", crate::runtime::world_rank(), m.to_string());
        let topo = hwloc2::Topology::new().ok_or_else(|| err("hwloc could not load the topology"))?;
        let mut cores = Vec::new();
        for c in topo.objects_with_type(&ObjectType::Core).map_err(|_| err("hwloc reports no cores"))? {
            let ancestor = |t: ObjectType| {
                let mut p = c.parent();
                while let Some(o) = p {
                    if o.object_type() == t {
                        return Some(o.logical_index() as usize);
                    }
                    p = o.parent();
                }
                None
            };
            let package = ancestor(ObjectType::Package).unwrap_or(0);
            let l3 = ancestor(ObjectType::L3Cache).unwrap_or(package);
            let numa = c.nodeset().map(|n| n.first().max(0) as usize).unwrap_or(0);
            let pus: Vec<usize> = c.cpuset().map(|s| s.into_iter().map(|p| p as usize).collect()).unwrap_or_default();
            if !pus.is_empty() {
                cores.push(Core { id: c.logical_index() as usize, package, numa, l3, pus });
            }
        }
        if cores.is_empty() {
            return Err(err("hwloc found no cores with processing units"));
        }
        Ok(Topology { cores })
    }

    /// A made-up regular topology (for tests and planning): `packages` x `numa_per_package` x
    /// `cores_per_numa` cores with `pus_per_core` PUs each, one L3 per NUMA node, PUs numbered
    /// core by core.
    pub fn synthetic(packages: usize, numa_per_package: usize, cores_per_numa: usize, pus_per_core: usize) -> Topology {
        let mut cores = Vec::new();
        for p in 0..packages {
            for n in 0..numa_per_package {
                let numa = p * numa_per_package + n;
                for _ in 0..cores_per_numa {
                    let id = cores.len();
                    let pus = (0..pus_per_core).map(|k| id * pus_per_core + k).collect();
                    cores.push(Core { id, package: p, numa, l3: numa, pus });
                }
            }
        }
        Topology { cores }
    }

    /// The cores that have at least one PU in `allowed`, each restricted to those PUs.
    pub fn restrict(&self, allowed: &[usize]) -> Topology {
        let cores = self
            .cores
            .iter()
            .filter_map(|c| {
                let pus: Vec<usize> = c.pus.iter().copied().filter(|p| allowed.contains(p)).collect();
                (!pus.is_empty()).then(|| Core { pus, ..c.clone() })
            })
            .collect();
        Topology { cores }
    }

    /// The core that holds PU `pu`.
    pub fn core_of_pu(&self, pu: usize) -> Option<&Core> {
        self.cores.iter().find(|c| c.pus.contains(&pu))
    }
}
