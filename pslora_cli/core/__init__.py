"""Pure, device-agnostic tensor math: no I/O, no CLI, no store, no data layer."""
