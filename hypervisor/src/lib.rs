//! QEMU and QMP (issue 3).
