"""Many devices at once: an inventory of named devices and groups, operations run over a group in
parallel, and model rollouts in waves behind an on-device shadow check."""
