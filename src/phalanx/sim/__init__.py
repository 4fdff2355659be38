"""A deterministic simulator that runs Raft clusters through faults and checks safety."""
