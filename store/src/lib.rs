//! Transactional ordered key-value store (issue 2).
