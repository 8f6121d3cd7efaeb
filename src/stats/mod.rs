//! Estimation: per-item rates by empirical Bayes ([`beta_binomial`]), the
//! effects of attributes by logistic regression ([`logistic`]), bandit
//! allocation and off-policy evaluation ([`bandit`]), and the special
//! functions they need ([`special`]). Pure compute, like `models/`: no
//! files, no tokio, no config.

pub mod bandit;
pub mod beta_binomial;
pub mod logistic;
pub mod special;
