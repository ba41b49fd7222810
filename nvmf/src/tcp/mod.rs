//! The NVMe/TCP transport, shared by both sides: the PDU codec ([`pdu`]) and the receive
//! framer ([`framer`]).

pub mod framer;
pub mod pdu;
