// SPDX-License-Identifier: MIT OR Apache-2.0
//! Container images from outside: everything here reads input nobody vouched for.
//!
//! [`digest`] validates digest strings and checks blobs while they stream; [`gzip`] inflates
//! gzip members; [`tar`] reads layer archives within fixed bounds; [`layer`] turns one layer
//! blob into a list of changes, storing file contents in the object store as they arrive;
//! [`merge`] applies the layers in order onto the [`crate::tree::Tree`] the image writer takes.
//! Fetching (registries, archives, layout directories) and the order of work stay in Python;
//! every byte they hand over is checked here.

pub mod digest;
pub mod gzip;
pub mod layer;
pub mod merge;
pub mod tar;
