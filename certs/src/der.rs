//! Minimal DER helpers: element lengths and re-encoding, enough to split concatenated
//! DER and to build test certificates that rcgen cannot make (X.509 v1).

/// Total length (header + content) of the DER element at the start of `input`, if the
/// header is well formed. Does not check that `input` holds that many bytes.
pub(crate) fn tlv_len(input: &[u8]) -> Option<usize> {
    let (hdr, len) = header(input)?;
    hdr.checked_add(len)
}

/// (header length, content length) of the element at the start of `input`.
fn header(input: &[u8]) -> Option<(usize, usize)> {
    let first_len = *input.get(1)?;
    if first_len < 0x80 {
        return Some((2, first_len as usize));
    }
    let n = (first_len & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *input.get(2 + i)? as usize;
    }
    Some((2 + n, len))
}

/// The top-level elements inside the constructed element at the start of `input`.
pub(crate) fn children(input: &[u8]) -> Option<Vec<&[u8]>> {
    let (hdr, len) = header(input)?;
    let mut body = input.get(hdr..hdr.checked_add(len)?)?;
    let mut out = Vec::new();
    while !body.is_empty() {
        let l = tlv_len(body)?;
        out.push(body.get(..l)?);
        body = &body[l..];
    }
    Some(out)
}

/// Encodes a DER element with the given tag around `content`.
pub(crate) fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip() {
        for n in [0usize, 1, 127, 128, 255, 256, 70000] {
            let e = encode(0x30, &vec![0u8; n]);
            assert_eq!(tlv_len(&e), Some(e.len()));
            assert_eq!(children(&encode(0x30, &e)).map(|c| c.len()), Some(1));
        }
        assert_eq!(tlv_len(&[0x30]), None);
        assert_eq!(tlv_len(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }
}
