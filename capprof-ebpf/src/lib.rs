#![no_std]
// Empty on purpose: this crate is a [[bin]]. The lib target lets capprof
// list it as a build-dependency so cargo rebuilds on change (aya-template).
