"""The event store: events, canonical codec, chain, Merkle tree, checkpoints, projections, replay."""
