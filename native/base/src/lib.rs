// SPDX-License-Identifier: MIT OR Apache-2.0
//! The rules below every part of the toolchain: fs-verity digests ([`fsverity`], on the SHA-256
//! kernels of [`hash`]), the shared file protocols ([`fsio`]) and a repository's lookup rules
//! ([`repo`]). The core (`composefs-native`, behind Python) and the native binaries of the mount
//! crate (`mount.composefs`, the `cfsctl` front) both use these; neither keeps a copy.

pub mod fsio;
pub mod fsverity;
pub mod hash;
pub mod repo;
