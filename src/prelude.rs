//! The names a simulation needs in scope: `use phalanx::prelude::*;`.

pub use crate::comm::{Comm, Op, Source, ThreadConfig, ANY_TAG};
pub use crate::decomp::{Decomposition, DistArray, Stencil};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::runtime::{PinPolicy, Runtime, ThreadLevel};
