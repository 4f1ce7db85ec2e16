"""What the user points at: checkpoint folders found and loaded safely, the --model / --data / --loss specs, and λ̂
curves from elsewhere in CSV/TSV tables."""
