//! What specs are read and checked with, below both step kinds and models: a
//! table to read a spec from, the problems checks report, and common bounds.

use serde::de::DeserializeOwned;

/// A table of keys as the pipeline loader hands it over; the loader keeps the
/// spans, so an error still points at its line.
pub trait ReadTable {
    /// The keys (those of a step kind, or of a model) as `T`.
    fn own<T: DeserializeOwned>(&mut self) -> Option<T>;
}

/// A value a check refuses: `key` is the dotted key below the step
/// (`params.day`); the diagnostic points at its first part's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `key` must be a whole number from 1 to `max`.
pub fn whole(key: &str, value: usize, max: usize) -> Option<Problem> {
    (!(1..=max).contains(&value))
        .then(|| Problem::new(key, format!("must be between 1 and {max}, not {value}")))
}

/// `key` must be a finite number from `low` to `high`.
pub fn between(key: &str, value: f32, low: f32, high: f32) -> Option<Problem> {
    (!(value.is_finite() && (low..=high).contains(&value))).then(|| {
        Problem::new(
            key,
            format!("must be between {low} and {high}, not {value}"),
        )
    })
}
