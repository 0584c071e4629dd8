// SPDX-License-Identifier: MIT OR Apache-2.0
//! Hash primitives tuned for fs-verity's workload (many equal-length messages).

pub mod fx;
#[cfg(target_arch = "x86_64")]
pub mod sha256_x16;
pub mod sha256_x2;
