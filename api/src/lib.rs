//! REST API, client library and binaries (issue 2).
