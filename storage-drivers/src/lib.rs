//! Volume drivers (issue 4).
