//! RFC 6962 Merkle trees: the hashing, proofs, their verification, and the compact range
//! the relay keeps to extend the log one leaf at a time.
//!
//! Leaf hash = SHA-256(0x00 ‖ data); node hash = SHA-256(0x01 ‖ left ‖ right); a tree of
//! n > 1 leaves splits at the largest power of two below n. Verification follows RFC 9162
//! §2.1.3.2 and §2.1.4.2, and is tested against the Certificate Transparency vectors and
//! against forged proofs: verifier code is security-critical.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `index`.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut p = inclusion_proof(&leaves[..k], index);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(&leaves[k..], index - k);
        p.push(root(&leaves[..k]));
        p
    }
}

/// PROOF(m, D[n]): the consistency proof between the first `m` leaves and all of them.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    fn sub(leaves: &[Hash], m: usize, whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole {
                Vec::new()
            } else {
                vec![root(leaves)]
            };
        }
        let k = split(n);
        if m <= k {
            let mut p = sub(&leaves[..k], m, whole);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = sub(&leaves[k..], m - k, false);
            p.push(root(&leaves[..k]));
            p
        }
    }
    if m == 0 || m > leaves.len() {
        return Vec::new();
    }
    sub(leaves, m, true)
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` in the tree of `size` with `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `first` leaves (root `first_root`)
/// is a prefix of the tree of `second` leaves (root `second_root`)?
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    &fr == first_root && &sr == second_root && s == 0
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first.
/// Appending a leaf and computing the root are O(log n), so the relay never re-reads the
/// whole log to seal it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    peaks: Vec<Hash>,
}

impl CompactRange {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn append(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut n = self.size;
        while n & 1 == 1 {
            let left = self.peaks.pop().expect("a peak for every set bit");
            h = node_hash(&left, &h);
            n >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        match self.peaks.split_last() {
            None => empty_root(),
            Some((last, rest)) => rest.iter().rev().fold(*last, |acc, p| node_hash(p, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The Certificate Transparency reference leaves and roots (RFC 6962 test data).
    fn ct_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
    }

    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_reference_tree_heads() {
        let leaves = ct_leaves();
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut range = CompactRange::default();
        for n in 1..=8 {
            assert_eq!(hex::encode(root(&leaves[..n])), CT_ROOTS[n - 1], "size {n}");
            range.append(leaves[n - 1]);
            assert_eq!(
                range.root(),
                root(&leaves[..n]),
                "compact range at size {n}"
            );
        }
    }

    #[test]
    fn proofs_match_the_reference_paths() {
        let leaves = ct_leaves();
        assert_eq!(
            inclusion_proof(&leaves, 0),
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ]
        );
        assert_eq!(
            inclusion_proof(&leaves, 5),
            vec![
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ]
        );
        assert_eq!(
            consistency_proof(&leaves, 2),
            vec![
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ]
        );
        assert_eq!(
            consistency_proof(&leaves[..5], 2),
            vec![
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ]
        );
    }

    fn many(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&[i as u8, (i * 7) as u8]))
            .collect()
    }

    #[test]
    fn every_inclusion_proof_verifies_and_forgeries_do_not() {
        let all = many(37);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let r = root(tree);
            for i in 0..n {
                let p = inclusion_proof(tree, i);
                assert!(
                    verify_inclusion(&tree[i], i as u64, n as u64, &p, &r),
                    "{i} of {n}"
                );
                // Wrong index, leaf, root; a tampered, shortened or lengthened path. (The
                // size is bound to the root by the signed checkpoint, not by the path.)
                assert!(!verify_inclusion(&tree[i], i as u64 + 1, n as u64, &p, &r));
                assert!(!verify_inclusion(
                    &leaf_hash(b"forged"),
                    i as u64,
                    n as u64,
                    &p,
                    &r
                ));
                assert!(!verify_inclusion(
                    &tree[i],
                    i as u64,
                    n as u64,
                    &p,
                    &leaf_hash(b"root")
                ));
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(&tree[i], i as u64, n as u64, &bad, &r));
                    assert!(!verify_inclusion(
                        &tree[i],
                        i as u64,
                        n as u64,
                        &p[..p.len() - 1],
                        &r
                    ));
                }
                let mut longer = p.clone();
                longer.push(r);
                assert!(!verify_inclusion(&tree[i], i as u64, n as u64, &longer, &r));
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_forgeries_do_not() {
        let all = many(33);
        for n in 1..=all.len() {
            let rn = root(&all[..n]);
            for m in 1..=n {
                let rm = root(&all[..m]);
                let p = consistency_proof(&all[..n], m);
                assert!(
                    verify_consistency(m as u64, n as u64, &rm, &rn, &p),
                    "{m} -> {n}"
                );
                assert!(!verify_consistency(
                    m as u64,
                    n as u64,
                    &leaf_hash(b"x"),
                    &rn,
                    &p
                ));
                if m < n {
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &rm,
                        &leaf_hash(b"x"),
                        &p
                    ));
                    let mut bad = p.clone();
                    let last = bad.len() - 1;
                    bad[last][5] ^= 0x80;
                    assert!(!verify_consistency(m as u64, n as u64, &rm, &rn, &bad));
                    assert!(!verify_consistency(m as u64, n as u64, &rm, &rn, &[]));
                }
            }
        }
        // A history rewritten after size m: the new tree is not consistent with the old head.
        let mut rewritten = all.clone();
        rewritten[3] = leaf_hash(b"altered");
        let old = root(&all[..10]);
        let p = consistency_proof(&rewritten[..20], 10);
        assert!(!verify_consistency(
            10,
            20,
            &old,
            &root(&rewritten[..20]),
            &p
        ));
    }
}

/// Serde helpers: hashes as lower-case hex.
pub mod hex_hash {
    use serde::Serializer;
    pub fn serialize<S: Serializer>(h: &super::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }
}

pub mod hex_hashes {
    use serde::Serializer;
    pub fn serialize<S: Serializer>(hs: &[super::Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(hs.iter().map(hex::encode))
    }
}
