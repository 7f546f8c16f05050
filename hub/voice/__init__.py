"""Voice: the ARI controller (`hub voice`), trunks, audio, call outcomes."""
