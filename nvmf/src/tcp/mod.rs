//! The NVMe/TCP transport: PDU codec ([`pdu`]) shared by both sides.

pub mod pdu;
