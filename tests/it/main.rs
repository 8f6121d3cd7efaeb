//! Integration tests, one binary (ripgrep's layout): modules by topic.

mod common;
mod extract;
mod lists;
mod run;
mod validate;
