//! Domain actors (issue 2).
