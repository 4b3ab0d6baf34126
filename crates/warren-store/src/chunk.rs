//! Chunks: content-defined pieces of files, named by the BLAKE3 hash of their plain
//! bytes and stored zstd-compressed. Because boundaries depend on content (FastCDC),
//! an edit in the middle of a large file changes only the chunks around it.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// File content is cut into chunks of 8 KiB to 128 KiB, 32 KiB on average.
pub const DATA_CHUNKS: Sizes = Sizes {
    min: 8 << 10,
    avg: 32 << 10,
    max: 128 << 10,
};
/// Manifests are cut finer, so one changed file rewrites a small part of the list.
pub const MANIFEST_CHUNKS: Sizes = Sizes {
    min: 2 << 10,
    avg: 8 << 10,
    max: 32 << 10,
};

const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The BLAKE3 hash of a chunk's plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..12])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        ChunkId::from_hex(&hex)
            .ok_or_else(|| serde::de::Error::custom("a chunk id is 64 hex digits"))
    }
}

/// A chunk as a manifest names it: its id and plain length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// A chunk ready to upload.
pub struct Sealed {
    pub chunk: ChunkRef,
    pub compressed: Bytes,
}

/// Cuts `data` into content-defined chunks and returns each one's range.
pub fn cut(data: &[u8], sizes: Sizes) -> Vec<std::ops::Range<usize>> {
    if data.is_empty() {
        return Vec::new();
    }
    fastcdc::v2020::FastCDC::new(data, sizes.min, sizes.avg, sizes.max)
        .map(|c| c.offset..c.offset + c.length)
        .collect()
}

/// Hashes and compresses one chunk.
pub fn seal(data: &[u8]) -> std::io::Result<Sealed> {
    let compressed = zstd::bulk::compress(data, ZSTD_LEVEL)?;
    Ok(Sealed {
        chunk: ChunkRef {
            id: ChunkId::of(data),
            len: data.len() as u32,
        },
        compressed: compressed.into(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("chunk {0} does not decompress: {1}")]
    Corrupt(ChunkId, std::io::Error),
    #[error("chunk {0} does not match its hash")]
    HashMismatch(ChunkId),
}

/// Decompresses a stored chunk and checks it against the hash it is named by.
pub fn open(chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, OpenError> {
    let plain = zstd::bulk::decompress(stored, chunk.len as usize)
        .map_err(|e| OpenError::Corrupt(chunk.id, e))?;
    if plain.len() != chunk.len as usize || ChunkId::of(&plain) != chunk.id {
        return Err(OpenError::HashMismatch(chunk.id));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn an_edit_in_the_middle_changes_few_chunks() {
        let mut data = pseudo_random(4 << 20, 7);
        let before: Vec<ChunkId> = cut(&data, DATA_CHUNKS)
            .into_iter()
            .map(|r| ChunkId::of(&data[r]))
            .collect();
        data[2 << 20..(2 << 20) + 4096].fill(0xAB);
        let after: Vec<ChunkId> = cut(&data, DATA_CHUNKS)
            .into_iter()
            .map(|r| ChunkId::of(&data[r]))
            .collect();
        let new = after.iter().filter(|c| !before.contains(c)).count();
        assert!(
            before.len() > 50,
            "a 4 MiB file makes many chunks: {}",
            before.len()
        );
        assert!(new <= 3, "a 4 KiB edit changed {new} chunks");
    }

    #[test]
    fn seal_then_open_round_trips_and_detects_damage() {
        let data = pseudo_random(100_000, 3);
        let sealed = seal(&data).unwrap();
        assert_eq!(open(&sealed.chunk, &sealed.compressed).unwrap(), data);
        let other = seal(b"something else").unwrap();
        assert!(matches!(
            open(&sealed.chunk, &other.compressed),
            Err(OpenError::HashMismatch(_))
        ));
        assert!(open(&sealed.chunk, b"not zstd").is_err());
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id = ChunkId::of(b"x");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
        assert_eq!(ChunkId::from_hex(&"g".repeat(64)), None);
    }
}
