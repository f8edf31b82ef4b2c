//! Review rev44: pipelines as a data team runs them (parse → enrich → aggregate → sink), from
//! the outside: nothing lost under errors, retries with backoff and timeouts (paused clock),
//! sources that fail, end at once or never end, backpressure from a slow sink (also across a
//! fan-out and a bus hop), abandoned sends, exact monitor figures, and a foreign envelope on a
//! `via_bus` topic while every slot waits on the hop.

mod handoff;
mod resilience;
mod runs;
