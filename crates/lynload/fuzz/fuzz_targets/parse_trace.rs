//! Fuzz the trace parser: any bytes give a trace or a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lynload::parse_trace(data);
});
