//! Where committed writes on mapped tables come from.
