"""The verbs and what they decide: the driver (the only writer of the state), pure planning over the state
and the host's facts, the persisted state, and the desired kernel state derived from it."""
