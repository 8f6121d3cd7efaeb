//! Estimation: per-item rates by empirical Bayes ([`beta_binomial`]) and the
//! special functions it needs ([`special`]). Pure compute, like `models/`: no
//! files, no tokio, no config.

pub mod beta_binomial;
pub mod special;
