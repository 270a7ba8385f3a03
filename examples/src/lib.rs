//! Examples of embedding tiqu-core; see the `examples` targets.
