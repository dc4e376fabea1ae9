"""trainer: fusion classifiers trained on cached featstore vectors (never decodes media or runs encoders)."""
