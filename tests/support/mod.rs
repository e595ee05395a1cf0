//! Shared test support. `mod support;` from any `tests/*.rs`.
//!
//! Each test binary uses only part of this, hence the allow.
#![allow(dead_code, unused_imports)]

pub mod apiserver;

pub use apiserver::{
    ApiError, Budget, Builder, Config, Fault, PodDeletion, RequestRecord, TestApiServer,
};
