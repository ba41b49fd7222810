//! Core masks in SPDK's syntax: `0x3`, `3`, `[0,1]`, `[0-3,6]`.

use crate::ReactorError;

/// Parses a core mask into the sorted list of core numbers it names.
pub fn parse_core_mask(s: &str) -> Result<Vec<usize>, ReactorError> {
    let bad = || ReactorError::BadCoreMask(s.to_string());
    let t = s.trim();
    let mut cores = Vec::new();
    if let Some(list) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if a > b || b >= 1024 {
                        return Err(bad());
                    }
                    cores.extend(a..=b);
                }
                None => cores.push(part.parse().map_err(|_| bad())?),
            }
        }
    } else {
        let hex = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let v = u128::from_str_radix(hex, 16).map_err(|_| bad())?;
        cores.extend((0..128).filter(|i| v & (1u128 << i) != 0));
    }
    cores.sort_unstable();
    cores.dedup();
    if cores.is_empty() {
        return Err(bad());
    }
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(parse_core_mask("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_mask("1").unwrap(), vec![0]);
        assert_eq!(parse_core_mask("[0-2,5]").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_core_mask("0x0").is_err());
        assert!(parse_core_mask("zz").is_err());
        assert!(parse_core_mask("[3-1]").is_err());
    }
}
