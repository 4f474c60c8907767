//! Supervision trees on ractor (issue 2).
