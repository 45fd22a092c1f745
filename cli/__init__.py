"""`llm-interface`, the command line: serve (local mode), api, worker, models, plan, worker-health, batch watch."""
