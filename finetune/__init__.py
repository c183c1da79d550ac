"""Fine-tuning recipes on the shared core and training loop: sequence classification and span QA."""
