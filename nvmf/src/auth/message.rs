//! The AUTH_Send / AUTH_Receive payloads of DH-HMAC-CHAP: every message starts with
//! `auth_type, auth_id, reserved[2], T_ID (le16)`. Decoders check lengths and return
//! [`AuthFailure::IncorrectPayload`] for anything that does not fit.

use super::{AuthFailure, DhGroup, DhchapHash};

/// auth_type: common messages (Negotiate, Failure1/2), DH-HMAC-CHAP messages.
pub const TYPE_COMMON: u8 = 0x00;
pub const TYPE_DHCHAP: u8 = 0x01;
/// auth_id values.
pub const ID_NEGOTIATE: u8 = 0x00;
pub const ID_CHALLENGE: u8 = 0x01;
pub const ID_REPLY: u8 = 0x02;
pub const ID_SUCCESS1: u8 = 0x03;
pub const ID_SUCCESS2: u8 = 0x04;
pub const ID_FAILURE2: u8 = 0xf0;
pub const ID_FAILURE1: u8 = 0xf1;
/// Protocol descriptor AUTHID of DH-HMAC-CHAP.
pub const AUTHID_DHCHAP: u8 = 0x01;
/// The security protocol AUTH_Send/AUTH_Receive carry (SECP), and its SPSP0/SPSP1.
pub const SECP_NVME_AUTH: u8 = 0xe9;
pub const SPSP: u8 = 0x01;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// (auth_type, auth_id, T_ID) of a message, if it has the common header.
pub fn header(b: &[u8]) -> Option<(u8, u8, u16)> {
    (b.len() >= 6).then(|| (b[0], b[1], le16(b, 4)))
}

/// AUTH_Negotiate: what the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiate {
    pub tid: u16,
    pub sc_c: u8,
    pub hashes: Vec<u8>,
    pub dhgroups: Vec<u8>,
}

impl Negotiate {
    /// Decodes a Negotiate; the DH-HMAC-CHAP descriptor is taken (the only protocol).
    pub fn decode(b: &[u8]) -> Result<Negotiate, AuthFailure> {
        if b.len() < 8 || b[0] != TYPE_COMMON || b[1] != ID_NEGOTIATE {
            return Err(AuthFailure::IncorrectPayload);
        }
        let napd = b[7] as usize;
        if napd == 0 || b.len() < 8 + 64 * napd {
            return Err(if napd == 0 {
                AuthFailure::ProtocolUnusable
            } else {
                AuthFailure::IncorrectPayload
            });
        }
        for i in 0..napd {
            let d = &b[8 + 64 * i..8 + 64 * (i + 1)];
            if d[0] != AUTHID_DHCHAP {
                continue;
            }
            let (halen, dhlen) = (d[2] as usize, d[3] as usize);
            if halen > 30 || dhlen > 30 {
                return Err(AuthFailure::IncorrectPayload);
            }
            return Ok(Negotiate {
                tid: le16(b, 4),
                sc_c: b[6],
                hashes: d[4..4 + halen].to_vec(),
                dhgroups: d[34..34 + dhlen].to_vec(),
            });
        }
        Err(AuthFailure::ProtocolUnusable)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 72];
        b[0] = TYPE_COMMON;
        b[1] = ID_NEGOTIATE;
        b[4..6].copy_from_slice(&self.tid.to_le_bytes());
        b[6] = self.sc_c;
        b[7] = 1;
        b[8] = AUTHID_DHCHAP;
        b[10] = self.hashes.len().min(30) as u8;
        b[11] = self.dhgroups.len().min(30) as u8;
        for (i, h) in self.hashes.iter().take(30).enumerate() {
            b[12 + i] = *h;
        }
        for (i, g) in self.dhgroups.iter().take(30).enumerate() {
            b[42 + i] = *g;
        }
        b
    }
}

/// DH-HMAC-CHAP_Challenge (controller to host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub tid: u16,
    pub hash: DhchapHash,
    pub group: DhGroup,
    pub seqnum: u32,
    pub challenge: Vec<u8>,
    pub dh_value: Vec<u8>,
}

impl Challenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0] = TYPE_DHCHAP;
        b[1] = ID_CHALLENGE;
        b[4..6].copy_from_slice(&self.tid.to_le_bytes());
        b[6] = self.hash.digest_len() as u8;
        b[8] = self.hash as u8;
        b[9] = self.group as u8;
        b[10..12].copy_from_slice(&(self.dh_value.len() as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.seqnum.to_le_bytes());
        b.extend_from_slice(&self.challenge);
        b.extend_from_slice(&self.dh_value);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Challenge, AuthFailure> {
        if b.len() < 16 || b[0] != TYPE_DHCHAP || b[1] != ID_CHALLENGE {
            return Err(AuthFailure::IncorrectMessage);
        }
        let hash = DhchapHash::from_id(b[8]).ok_or(AuthFailure::HashUnusable)?;
        if b[6] as usize != hash.digest_len() {
            return Err(AuthFailure::HashUnusable);
        }
        let group = DhGroup::from_id(b[9]).ok_or(AuthFailure::DhGroupUnusable)?;
        let dhvlen = le16(b, 10) as usize;
        if dhvlen != group.size() {
            return Err(AuthFailure::IncorrectPayload);
        }
        let hl = hash.digest_len();
        if b.len() < 16 + hl + dhvlen {
            return Err(AuthFailure::IncorrectPayload);
        }
        Ok(Challenge {
            tid: le16(b, 4),
            hash,
            group,
            seqnum: le32(b, 12),
            challenge: b[16..16 + hl].to_vec(),
            dh_value: b[16 + hl..16 + hl + dhvlen].to_vec(),
        })
    }
}

/// DH-HMAC-CHAP_Reply (host to controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub tid: u16,
    pub response: Vec<u8>,
    /// The host's challenge to the controller (bidirectional authentication), with its
    /// sequence number.
    pub ctrl_challenge: Option<(Vec<u8>, u32)>,
    pub dh_value: Vec<u8>,
}

impl Reply {
    /// Decodes a Reply whose hash length must be `hl`.
    pub fn decode(b: &[u8], hl: usize) -> Result<Reply, AuthFailure> {
        if b.len() < 16 || b[0] != TYPE_DHCHAP || b[1] != ID_REPLY {
            return Err(AuthFailure::IncorrectMessage);
        }
        if b[6] as usize != hl || b[8] > 1 {
            return Err(AuthFailure::IncorrectPayload);
        }
        let dhvlen = le16(b, 10) as usize;
        let seqnum = le32(b, 12);
        if b.len() != 16 + 2 * hl + dhvlen {
            return Err(AuthFailure::IncorrectPayload);
        }
        let cvalid = b[8] == 1;
        // A sequence number with CVALID 0 is tolerated: Linux 6.12 sends one.
        if cvalid && seqnum == 0 {
            return Err(AuthFailure::IncorrectPayload);
        }
        Ok(Reply {
            tid: le16(b, 4),
            response: b[16..16 + hl].to_vec(),
            ctrl_challenge: cvalid.then(|| (b[16 + hl..16 + 2 * hl].to_vec(), seqnum)),
            dh_value: b[16 + 2 * hl..16 + 2 * hl + dhvlen].to_vec(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let hl = self.response.len();
        let mut b = vec![0u8; 16];
        b[0] = TYPE_DHCHAP;
        b[1] = ID_REPLY;
        b[4..6].copy_from_slice(&self.tid.to_le_bytes());
        b[6] = hl as u8;
        b[10..12].copy_from_slice(&(self.dh_value.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.response);
        match &self.ctrl_challenge {
            Some((c, s)) => {
                b[8] = 1;
                b[12..16].copy_from_slice(&s.to_le_bytes());
                b.extend_from_slice(c);
            }
            None => b.extend(std::iter::repeat_n(0u8, hl)),
        }
        b.extend_from_slice(&self.dh_value);
        b
    }
}

/// DH-HMAC-CHAP_Success1: HL always set (Linux checks it), the controller's response when
/// the host asked for one.
pub fn success1(tid: u16, hl: usize, response: Option<&[u8]>) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0] = TYPE_DHCHAP;
    b[1] = ID_SUCCESS1;
    b[4..6].copy_from_slice(&tid.to_le_bytes());
    b[6] = hl as u8;
    if let Some(r) = response {
        b[8] = 1;
        b.extend_from_slice(r);
    }
    b
}

/// DH-HMAC-CHAP_Success2 (host to controller).
pub fn success2(tid: u16) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0] = TYPE_DHCHAP;
    b[1] = ID_SUCCESS2;
    b[4..6].copy_from_slice(&tid.to_le_bytes());
    b
}

/// AUTH_Failure1 (controller) or AUTH_Failure2 (host): reason 01h and its explanation.
pub fn failure(id: u8, tid: u16, why: AuthFailure) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b[0] = TYPE_COMMON;
    b[1] = id;
    b[4..6].copy_from_slice(&tid.to_le_bytes());
    b[6] = 0x01;
    b[7] = why as u8;
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_short_ones_are_refused() {
        let n = Negotiate {
            tid: 7,
            sc_c: 0,
            hashes: vec![1, 2, 3],
            dhgroups: vec![0, 1, 2, 3, 4, 5],
        };
        let b = n.encode();
        assert_eq!(b.len(), 72);
        assert_eq!(b[42], 0, "DH ids at descriptor offset 34");
        assert_eq!(Negotiate::decode(&b).unwrap(), n);
        assert_eq!(
            Negotiate::decode(&b[..40]),
            Err(AuthFailure::IncorrectPayload)
        );
        let mut none = b.clone();
        none[7] = 0;
        assert_eq!(Negotiate::decode(&none), Err(AuthFailure::ProtocolUnusable));
        let mut long = b.clone();
        long[10] = 31;
        assert_eq!(Negotiate::decode(&long), Err(AuthFailure::IncorrectPayload));

        let c = Challenge {
            tid: 7,
            hash: DhchapHash::Sha384,
            group: DhGroup::Null,
            seqnum: 99,
            challenge: vec![5; 48],
            dh_value: vec![],
        };
        assert_eq!(Challenge::decode(&c.encode()).unwrap(), c);
        let r = Reply {
            tid: 7,
            response: vec![1; 48],
            ctrl_challenge: Some((vec![2; 48], 1234)),
            dh_value: vec![],
        };
        assert_eq!(Reply::decode(&r.encode(), 48).unwrap(), r);
        assert_eq!(
            Reply::decode(&r.encode(), 32),
            Err(AuthFailure::IncorrectPayload)
        );
        assert_eq!(
            Reply::decode(&r.encode()[..60], 48),
            Err(AuthFailure::IncorrectPayload)
        );
        let mut zero_seq = r.encode();
        zero_seq[12..16].fill(0);
        assert_eq!(
            Reply::decode(&zero_seq, 48),
            Err(AuthFailure::IncorrectPayload)
        );
        assert_eq!(
            header(&failure(ID_FAILURE1, 7, AuthFailure::Failed)),
            Some((0, 0xf1, 7))
        );
    }
}
