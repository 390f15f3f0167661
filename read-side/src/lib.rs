//! The query API: read models served over HTTP. Built by issue #3; empty until then.
