"""The OpenAI Batch API: files, batches, their lifecycle (arq jobs in every API process) and the jobs they send."""
