"""Looking inside a model: surprisal per character and single units' activations."""
