"""Output-length prediction: the predictor interface and registry, prompt features, the
learned model (offline training, online updates), the instruction corpus, the demo model."""
