"""The synthetic talking-character corpus: characters, speech, samples, splits, shards, loaders."""
