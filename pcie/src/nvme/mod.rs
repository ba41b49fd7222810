//! The NVMe PCIe driver: registers ([`regs`]), commands ([`cmd`]), PRP lists ([`prp`]), the
//! controller and its admin queue ([`ctrlr`]), and the per-reactor I/O queue pairs
//! ([`qpair`]).

pub mod cmd;
pub mod ctrlr;
pub mod prp;
pub mod qpair;
pub mod regs;
