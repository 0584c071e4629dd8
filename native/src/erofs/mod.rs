// SPDX-License-Identifier: MIT OR Apache-2.0
//! The composefs EROFS image: on-disk structures ([`format`]), the writer and the reader.

pub mod build;
pub mod format;
pub mod reader;
pub mod writer;
