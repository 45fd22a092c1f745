"""Job handlers, one per model type: admit (validate, tokenise) and serve through the engines."""
