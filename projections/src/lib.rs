//! Projector workers that follow the global log into read models. Built by issue #3; empty
//! until then.
